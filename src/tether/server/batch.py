"""Batches on the server: ``batch`` (store many small files of a ``put -r``) and ``fetch`` (send
many small files of a ``get -r``), one stream each (docs/PROTOCOL.md, "Batches"). This module
speaks the protocol; the files are stored and read by the client's
:class:`tether.storage.area.FileArea` (every name component checked, each directory opened once
per batch from its parent, no symlink followed for a confined client).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from tether.errors import BadRequest, TetherError
from tether.net.framed import FramedConnection
from tether.protocol import Batch, Done, Fetch, Files, Message
from tether.server.diskpool import Lease, Offload, inline
from tether.storage.area import BatchFiles, FileArea
from tether.storage.batch import BatchReceiver, Target
from tether.storage.names import shown_below
from tether.storage.source import file_hash

FileStored = Callable[[str, int, str], None]  # (shown path, size, hash): for the audit log
IDLE_FLUSH = 0.1  # seconds a batch waits for more data before placing the files already whole


class BatchPut:
    """Receives one batch: checks it whole, then stores each file as its bytes complete.

    The disk work (finding the directories, writing each file, making a group of them durable
    and placing them, fsyncing their directories) runs on the disk pool (``offload``), in
    order, in this batch's task (:meth:`run`); DATA waits in :attr:`chunks` meanwhile, counted
    in :attr:`buffered` (the byte budget) and granted credit once written."""

    def __init__(self, conn: FramedConnection, stream: int, req: Batch, area: FileArea,
                 max_upload: int, on_file: FileStored, offload: Offload = inline) -> None:
        self.conn = conn
        self.stream = stream
        self.req = req
        self.area = area
        self.max_upload = max_upload
        self.on_file = on_file
        self.offload = offload
        self.names: list[str] = []
        self.receiver: BatchReceiver | None = None
        self.task: asyncio.Task[None] | None = None
        self.chunks: deque[bytes | bytearray] = deque()
        self.buffered = 0
        self._arrived = asyncio.Event()
        self._stored: list[tuple[Target, str]] = []  # appended on a pool thread
        self._lease: Lease | None = None
        self._ending = False  # the stream ended: store what arrived, wait for nothing more
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self) -> None:
        """Refuse a batch over this server's upload limit before anything is written (its
        lists and caps were checked as it arrived: Batch.problem)."""
        if self.max_upload and any(size > self.max_upload for size in self.req.sizes):
            raise BadRequest(f"a file of {max(self.req.sizes)} bytes exceeds this server's "
                             f"upload limit of {self.max_upload} bytes")

    async def run(self) -> None:
        """Find the directories (refusing an unsafe name before any write), store each file as
        its bytes arrive, make the batch durable, answer ``done``."""
        req = self.req
        self._loop = asyncio.get_running_loop()
        files = BatchFiles(req.names, req.sizes, req.modes, req.mtimes, req.hashes)
        receiver = self.receiver = await self.offload(
            lambda: self.area.store_batch(req.path, files, force=req.force, rename=req.rename,
                                          on_stored=self._on_stored),
            cleanup=lambda made: made.close())
        lease = self._lease = Lease(receiver.close)
        try:
            while not receiver.complete and (self.chunks or not self._ending):
                if not self.chunks:
                    self._arrived.clear()
                    if receiver.pending and not await self._arrives(IDLE_FLUSH):
                        # the sender paused: what is whole goes into place now (durable),
                        # holding no descriptors while the batch waits
                        await self.offload(lease.call, receiver.flush)
                        self._report()
                    await self._arrived.wait()
                    continue
                data = self.chunks.popleft()
                try:
                    await self.offload(lease.call, receiver.feed, data)
                finally:
                    self.buffered -= len(data)
                    if not self._ending:
                        self.conn.consumed(self.stream, len(data))
                self._report()
            if self._ending:  # cut short: what arrived whole is stored, and durable
                with contextlib.suppress(TetherError, OSError):
                    await self.offload(lease.call, receiver.finish)
                return
            await self.offload(lease.call, receiver.finish)
        finally:
            self._report()
            lease.close()
        self.conn.send(Done(path=req.path, size=receiver.expected, count=len(self.names),
                            names=self.names, stream=self.stream))

    async def _arrives(self, seconds: float) -> bool:
        """Whether more DATA (or the stream's end) arrives within ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), seconds)
        return self._arrived.is_set()

    def _on_stored(self, target: Target, final: str) -> None:
        """A file is in place (on a pool thread, or wherever the receiver was closed): it is
        reported on the loop, where the audit log is, also after the batch ended."""
        self._stored.append((target, final))
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server is stopping
                self._loop.call_soon_threadsafe(self._report)

    def _report(self) -> None:
        while self._stored:
            target, final = self._stored.pop(0)
            shown = target.shown if final == target.name else posixpath.join(
                posixpath.dirname(target.shown), final)
            self.names.append(shown)
            self.on_file(shown, target.size, target.hash)

    def feed(self, data: bytes | bytearray) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self._arrived.set()

    def handle(self, msg: Message) -> None:
        """Nothing but close and error reach a batch (the core refuses anything else)."""

    def abandon(self) -> None:
        """The stream ended (or the batch did): files already stored stay, as they are whole
        and verified, and so do those whose bytes had arrived (the task stores them, as the
        loop did when it stored them itself, then ends); an incomplete one is never
        written."""
        self._ending = True
        self._arrived.set()


FETCHES_AT_ONCE = 4  # per connection: a fetch holds up to MAX_BYTES while it is sent


async def send_batch(conn: FramedConnection, stream: int, req: Fetch, area: FileArea,
                     on_file: FileStored, slots: AbstractAsyncContextManager[Any],
                     offload: Offload = inline) -> Done:
    """Read every named file whole and hash it (on the disk pool), announce them in
    ``files``, then send their contents; ``slots`` bounds how many fetches hold their files at
    once (per connection, per identity)."""
    async with slots:
        found, hashes = await offload(_read_and_hash, area, req)
        contents = [data for data, _ in found]
        total = sum(len(data) for data in contents)
        conn.send(Files(sizes=[len(data) for data in contents],
                        modes=[st.st_mode & 0o7777 for _, st in found],
                        mtimes=[st.st_mtime_ns for _, st in found], hashes=hashes,
                        stream=stream))
        if total:
            await conn.send_data(stream, 0, b"".join(contents))
        done = Done(path=req.path, size=total, count=len(contents), stream=stream)
        conn.send(done)
        await conn.drain()
    for name, data, hash_ in zip(req.names, contents, hashes, strict=True):
        on_file(shown_below(req.path, name), len(data), hash_)
    return done


def _read_and_hash(area: FileArea, req: Fetch) -> tuple[list[tuple[bytes, Any]], list[str]]:
    """(what :meth:`FileArea.read_batch` found, each file's hash): one trip to the pool."""
    found = area.read_batch(req.path, req.names)
    return found, [file_hash(data) for data, _ in found]
