"""Workload: one forwarded TCP connection's throughput, ``tether forward -L`` against
``ssh -N -L`` on the same machine. A sink on loopback reads and discards what arrives and
answers one byte at the end; the source sends N bytes through the forwarded port, half-closes,
and waits for that byte. Values are MiB/s over that wall time (the forward's set-up is not
counted: it runs before the clock starts and serves every round).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

from bench import MiB
from bench.config import Context
from bench.peers import HOST, SSH_ALIAS
from bench.procs import BenchError, free_port
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group

CHUNK = MiB


@contextlib.contextmanager
def sink() -> Iterator[int]:
    """A loopback server that discards each connection's bytes and answers b"k" at its end."""
    server = socket.create_server((HOST, 0))
    stop = threading.Event()

    def serve() -> None:
        buffer = bytearray(CHUNK)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while conn.recv_into(buffer):
                    pass
                conn.sendall(b"k")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(5)


def push(port: int, total: int) -> Sample:
    """Send ``total`` bytes to ``port``, half-close, wait for the sink's answer: MiB/s."""
    block = b"\0" * CHUNK
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=60) as conn:
        sent = 0
        while sent < total:
            conn.sendall(block[:min(CHUNK, total - sent)])
            sent += min(CHUNK, total - sent)
        conn.shutdown(socket.SHUT_WR)
        if conn.recv(1) != b"k":
            raise BenchError("the forwarded connection ended before the sink answered")
    seconds = time.perf_counter() - started
    return Sample(total / MiB / seconds, {"seconds": seconds})


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"the forwarder exited with {proc.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on {port} after {timeout} s")


def run(ctx: Context) -> list[GroupResult]:
    peers, n = ctx.peers, ctx.sizes.stream_bytes
    with sink() as dest, peers.tether_server() as server:
        tether = subprocess.Popen(
            peers.tether_cli("forward", "-p", str(server.port), "-L", f"0:{HOST}:{dest}", HOST),
            stdout=subprocess.PIPE, stderr=open(ctx.log("forward-tether"), "wb"))  # noqa: SIM115
        ssh_port = free_port()
        ssh = subprocess.Popen(peers.sshd.ssh("-N", "-L", f"{ssh_port}:{HOST}:{dest}",
                                              SSH_ALIAS),
                               stderr=open(ctx.log("forward-ssh"), "wb"))  # noqa: SIM115
        try:
            assert tether.stdout is not None
            found = re.match(rb"local \S+:(\d+) ", tether.stdout.readline())
            if found is None:
                raise BenchError("tether forward did not announce its listener")
            tether_port = int(found.group(1))
            _wait_port(ssh_port, ssh)
            group = Group(
                key="forward", title=f"one forwarded TCP connection, {n / 2**20:g} MiB",
                unit="MiB/s", better="higher", quantity="throughput",
                contenders=[
                    Contender("tether forward -L", lambda: push(tether_port, n),
                              "tether forward -L PORT:HOST:DPORT HOST", tether=True),
                    Contender("ssh -L", lambda: push(ssh_port, n),
                              "ssh -N -L PORT:HOST:DPORT HOST"),
                ],
                targets=[Target("throughput >= 1.5x `ssh -L`", "tether forward -L", ">=", 1.5,
                                peer="ssh -L")],
            )
            return [run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)]
        finally:
            for proc in (tether, ssh):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                if proc.poll() is None:
                    proc.kill()
