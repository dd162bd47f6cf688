"""A userspace latency proxy: the instrument of the ``wan`` workload (the kernel's netem is not
available on these machines).

``python -m bench.wanproxy TARGET_PORT:RTT_MS [...]`` listens on a free loopback port for each
route, prints one line ``ROUTE PORT`` per route and then ``ready``, and forwards every accepted
connection to ``127.0.0.1:TARGET_PORT`` until it is stopped (SIGTERM).

What it models: a path with a round trip of RTT_MS and no bandwidth limit of its own.

- Every chunk read from one side is held ``RTT_MS / 2`` milliseconds, then written to the other
  side, in order; each direction is delayed separately, so a request and its answer cost one
  round trip. Nothing is ever paced: a chunk whose time has come is written at once, so the
  proxy adds latency, never a throughput cap (it reads as fast as the sender writes).
- TCP's own handshake happens on loopback between the client and the proxy, so it would cost
  nothing; to charge it as a real path would, the first bytes from the client leave no earlier
  than one round trip after the proxy accepted the connection (SYN, SYN-ACK), and each then
  takes its half round trip on top.
- A half-close travels like data: the proxy shuts the other side's writing down once the bytes
  before it were delivered.
- What it holds per direction is bounded (``QUEUE_CAP``): beyond it the proxy stops reading, so a
  sender that ignores flow control meets back-pressure instead of filling memory.

Threads, one per direction per connection: ``recv`` and ``sendall`` release the GIL, so two
cores forward well over a GiB/s between loopback sockets.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import signal
import socket
import sys
import threading
import time
from types import FrameType

HOST = "127.0.0.1"
CHUNK = 1024 * 1024  # bytes read per recv at most
QUEUE_CAP = 512 * 1024 * 1024  # bytes held per direction before the proxy stops reading


class Direction:
    """One direction of one connection: a reader thread queues (due, bytes); a writer thread
    writes each chunk when it is due. ``b""`` in the queue is the sender's end (half-close)."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float,
                 not_before: float) -> None:
        self.src, self.dst = src, dst
        self.delay = delay
        self.not_before = not_before  # the client's bytes leave no earlier (TCP's handshake)
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held = 0
        self.cond = threading.Condition()
        self.done = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                data = b""
            due = max(time.monotonic(), self.not_before) + self.delay
            with self.cond:
                while self.held > QUEUE_CAP:
                    self.cond.wait()
                self.queue.append((due, data))
                self.held += len(data)
                self.cond.notify_all()
            if not data:
                return

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with self.cond:
                    self.queue.popleft()
                    self.held -= len(data)
                    self.cond.notify_all()
                if not data:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
        except OSError:
            for sock in (self.src, self.dst):  # the other side is gone: so is this connection
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            self.done.set()


def _serve_one(client: socket.socket, target: int, delay: float) -> None:
    accepted = time.monotonic()
    try:
        upstream = socket.create_connection((HOST, target))
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ways = [Direction(client, upstream, delay, accepted + 2 * delay),
            Direction(upstream, client, delay, 0.0)]
    for way in ways:
        way.start()
    for way in ways:
        way.done.wait()
    client.close()
    upstream.close()


def _listen(target: int, rtt_ms: float) -> int:
    """A listener for one route, accepting in its own thread; returns its port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(128)
    delay = rtt_ms / 2000

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=_serve_one, args=(client, target, delay),
                             daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    port: int = listener.getsockname()[1]
    return port


def _route(text: str) -> tuple[int, float]:
    target, _, rtt = text.partition(":")
    return int(target), float(rtt)


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wanproxy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("routes", nargs="+", type=_route, metavar="TARGET_PORT:RTT_MS")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    for target, rtt in args.routes:
        print(f"{target}:{rtt:g} {_listen(target, rtt)}", flush=True)
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
