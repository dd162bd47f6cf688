"""Batches on the server: ``batch`` (store many small files of a ``put -r``) and ``fetch`` (send
many small files of a ``get -r``), one stream each (docs/PROTOCOL.md, "Batches"). This module
speaks the protocol; the files are stored and read by the client's
:class:`tether.storage.area.FileArea` (every name component checked, each directory opened once
per batch from its parent, no symlink followed for a confined client).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from tether.errors import BadRequest
from tether.net.framed import FramedConnection
from tether.protocol import Batch, Done, Fetch, Files, Message
from tether.storage.area import BatchFiles, FileArea
from tether.storage.batch import BatchReceiver, Target
from tether.storage.names import shown_below
from tether.storage.source import file_hash

FileStored = Callable[[str, int, str], None]  # (shown path, size, hash): for the audit log


class BatchPut:
    """Receives one batch: checks it whole, then stores each file as its bytes complete."""

    def __init__(self, conn: FramedConnection, stream: int, req: Batch, area: FileArea,
                 max_upload: int, on_file: FileStored) -> None:
        self.conn = conn
        self.stream = stream
        self.req = req
        self.area = area
        self.max_upload = max_upload
        self.on_file = on_file
        self.names: list[str] = []
        self.receiver: BatchReceiver | None = None

    def start(self) -> None:
        """Refuse a batch over this server's upload limit or with an unsafe name before
        anything is written (its lists and caps were checked as it arrived: Batch.problem); a
        batch of empty files completes here."""
        req = self.req
        if self.max_upload and any(size > self.max_upload for size in req.sizes):
            raise BadRequest(f"a file of {max(req.sizes)} bytes exceeds this server's upload "
                             f"limit of {self.max_upload} bytes")
        files = BatchFiles(req.names, req.sizes, req.modes, req.mtimes, req.hashes)
        self.receiver = self.area.store_batch(req.path, files, force=req.force,
                                              rename=req.rename, on_stored=self._stored)
        if self.receiver.complete:
            self._finish()

    def _stored(self, target: Target, final: str) -> None:
        shown = target.shown if final == target.name else posixpath.join(
            posixpath.dirname(target.shown), final)
        self.names.append(shown)
        self.on_file(shown, target.size, target.hash)

    def feed(self, data: bytes | bytearray) -> None:
        try:
            assert self.receiver is not None  # DATA after the batch's done: dropped by the core
            self.receiver.feed(data)
            if self.receiver.complete:
                self._finish()
        finally:
            self.conn.consumed(self.stream, len(data))

    def _finish(self) -> None:
        assert self.receiver is not None
        try:
            self.receiver.finish()
        finally:
            self.receiver.close()
        self.conn.send(Done(path=self.req.path, size=self.receiver.expected,
                            count=len(self.names), names=self.names, stream=self.stream))

    def handle(self, msg: Message) -> None:
        """Nothing but close and error reach a batch (the core refuses anything else)."""

    def abandon(self) -> None:
        """The stream ended (or the batch did): files already stored stay, as they are whole
        and verified; an incomplete one was never written."""
        if self.receiver is not None:
            self.receiver.close()


FETCHES_AT_ONCE = 4  # per connection: a fetch holds up to MAX_BYTES while it is sent


async def send_batch(conn: FramedConnection, stream: int, req: Fetch, area: FileArea,
                     on_file: FileStored, slots: AbstractAsyncContextManager[Any]) -> Done:
    """Read every named file whole, announce them in ``files``, then send their contents;
    ``slots`` bounds how many fetches hold their files at once (per connection, per identity)."""
    async with slots:
        found = area.read_batch(req.path, req.names)
        contents = [data for data, _ in found]
        hashes = [file_hash(data) for data in contents]
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
