"""A fault-injecting TCP proxy for tests: it sits between a client and a server on loopback and
re-segments the byte stream (1-byte writes, random splits, coalescing), delays and throttles it,
and cuts or resets the connection at a chosen byte offset in either direction;
:class:`BlackHoleProxy` stops forwarding without closing, as a peer that vanished.

The proxy never looks inside the bytes (they are TLS), so whatever it does is exactly what a bad
network could do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class Faults:
    """What to do to the bytes of one direction."""

    split: str = "none"  # "none", "bytes" (1-byte writes), "random" (random pieces)
    coalesce: bool = False  # gather small reads into larger writes
    delay: float = 0.0  # seconds before each write
    rate: int = 0  # bytes per second (0: unthrottled)
    cut_at: int | None = None  # close after this many bytes have passed
    reset: bool = False  # with cut_at: send a TCP RST instead of a FIN
    seed: int = 0


@dataclass
class Proxy:
    target: tuple[str, int]
    upstream: Faults = field(default_factory=Faults)  # client -> server
    downstream: Faults = field(default_factory=Faults)  # server -> client
    port: int = 0
    cuts: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        pumps = [
            asyncio.create_task(self._pump(creader, swriter, cwriter, self.upstream)),
            asyncio.create_task(self._pump(sreader, cwriter, swriter, self.downstream)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.05)  # let the other direction flush what it has
        for task in pumps:
            task.cancel()
        for writer in (cwriter, swriter):
            with contextlib.suppress(Exception):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    other: asyncio.StreamWriter, faults: Faults) -> None:
        rng = random.Random(faults.seed)
        passed = 0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                if faults.coalesce:
                    await asyncio.sleep(0.002)
                    while len(reader._buffer) and len(data) < 1 << 20:
                        data += await reader.read(65536)
                if faults.cut_at is not None and passed + len(data) >= faults.cut_at:
                    await self._write(writer, data[: faults.cut_at - passed], faults, rng)
                    self.cuts += 1
                    self._cut(writer, other, faults.reset)
                    return
                passed += len(data)
                await self._write(writer, data, faults, rng)
        except (ConnectionError, OSError):
            return

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, data: bytes, faults: Faults,
                     rng: random.Random) -> None:
        pieces: list[bytes]
        if faults.split == "bytes":
            pieces = [data[i : i + 1] for i in range(len(data))]
        elif faults.split == "random":
            pieces, i = [], 0
            while i < len(data):
                n = rng.randint(1, max(1, min(len(data) - i, 4096)))
                pieces.append(data[i : i + n])
                i += n
        else:
            pieces = [data]
        for piece in pieces:
            if faults.delay:
                await asyncio.sleep(faults.delay)
            writer.write(piece)
            await writer.drain()
            if faults.rate:
                await asyncio.sleep(len(piece) / faults.rate)

    @staticmethod
    def _cut(writer: asyncio.StreamWriter, other: asyncio.StreamWriter, reset: bool) -> None:
        for w in (writer, other):
            sock = w.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort() if reset else w.close()


@dataclass
class BlackHoleProxy(Proxy):
    """Forwards until :meth:`vanish`; from then on it swallows everything in both directions
    and never closes, as a peer whose cable was cut (no FIN, no RST, keepalives answered)."""

    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def vanish(self) -> None:
        self.gone.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    other: asyncio.StreamWriter, faults: Faults) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if self.gone.is_set():
                    if not data:  # the other side closed: never pass that on
                        await asyncio.Event().wait()
                    continue
                if not data:
                    writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
