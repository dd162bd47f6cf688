"""Batches on the server: ``batch`` (store many small files of a ``put -r``) and ``fetch`` (send
many small files of a ``get -r``), one stream each (docs/PROTOCOL.md, "Batches").

Names are resolved through :class:`tether.server.files.FileArea` like any other path of this
client: every component a plain name, each directory opened once per batch from its parent,
without following symlinks for a confined client.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable

from tether.batch import (
    MAX_BYTES,
    BatchReceiver,
    DirCache,
    Target,
    check_lists,
    check_sizes,
    file_hash,
    name_parts,
    shown_below,
)
from tether.errors import BadRequest
from tether.net.framed import FramedConnection
from tether.protocol import Batch, Done, Fetch, Files, Message
from tether.server.files import FileArea

FileDone = Callable[[str, int, str], None]  # (shown path, size, hash): for the audit log


class BatchPut:
    """Receives one batch: checks it whole, then stores each file as its bytes complete."""

    def __init__(self, conn: FramedConnection, stream: int, req: Batch, area: FileArea,
                 max_upload: int, on_file: FileDone) -> None:
        self.conn = conn
        self.stream = stream
        self.req = req
        self.area = area
        self.max_upload = max_upload
        self.on_file = on_file
        self.names: list[str] = []
        self.dirs: DirCache | None = None
        self.receiver: BatchReceiver | None = None

    def start(self) -> None:
        """Refuse a malformed batch before anything is written; a batch of empty files
        completes here."""
        req = self.req
        check_lists(len(req.names), req.sizes, req.modes, req.mtimes, req.hashes)
        check_sizes(req.sizes)
        if self.max_upload and any(size > self.max_upload for size in req.sizes):
            raise BadRequest(f"a file of {max(req.sizes)} bytes exceeds this server's upload "
                             f"limit of {self.max_upload} bytes")
        for name in req.names:
            name_parts(name)
        self.dirs = DirCache(self.area.open_tree(req.path), self.area.open_sub_dir)
        base = posixpath.normpath(req.path)
        targets = []
        for name, size, mode, mtime, hash_ in zip(req.names, req.sizes, req.modes, req.mtimes,
                                                 req.hashes, strict=True):
            dir_fd, last = self.dirs.place(name)
            targets.append(Target(dir_fd, last, name if base == "." else f"{base}/{name}",
                                  size, mode & 0o1777, mtime, hash_))
        self.receiver = BatchReceiver(targets, force=req.force, rename=req.rename,
                                      on_stored=self._stored)
        if self.receiver.complete:
            self._finish()

    def _stored(self, target: Target, final: str) -> None:
        shown = target.shown if final == target.name else posixpath.join(
            posixpath.dirname(target.shown), final)
        self.names.append(shown)
        self.on_file(shown, target.size, target.hash)

    def feed(self, data: bytes | bytearray) -> None:
        try:
            if self.receiver is None or self.receiver.complete:
                raise BadRequest("data after a batch was complete")
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
            self.abandon()
        self.conn.send(Done(path=self.req.path, size=self.receiver.expected,
                            count=len(self.names), names=self.names, stream=self.stream))

    def handle(self, msg: Message) -> None:
        raise BadRequest(f"unexpected {msg.TYPE!r} in a batch")

    def abandon(self) -> None:
        """The stream ended (or the batch did): files already stored stay, as they are whole
        and verified; an incomplete one was never written."""
        if self.dirs is not None:
            self.dirs.close()
            self.dirs = None


FETCHES_AT_ONCE = 4  # per connection: a fetch holds up to MAX_BYTES while it is sent


async def send_batch(conn: FramedConnection, stream: int, req: Fetch, area: FileArea,
                     on_file: FileDone, slots: asyncio.Semaphore) -> Done:
    """Read every named file whole, announce them in ``files``, then send their contents;
    ``slots`` bounds how many fetches of one connection hold their files at once."""
    check_lists(len(req.names))
    for name in req.names:
        name_parts(name)
    async with slots:
        return await _send_batch(conn, stream, req, area, on_file)


async def _send_batch(conn: FramedConnection, stream: int, req: Fetch, area: FileArea,
                      on_file: FileDone) -> Done:
    shown = [shown_below(req.path, name) for name in req.names]
    contents: list[bytes] = []
    modes: list[int] = []
    mtimes: list[int] = []
    total = 0
    dirs = DirCache(area.open_tree(req.path), area.open_sub_dir)
    try:
        for name, where in zip(req.names, shown, strict=True):
            dir_fd, last = dirs.place(name)
            data, st = area.read_small(dir_fd, last, where, MAX_BYTES - total)
            total += len(data)
            contents.append(data)
            modes.append(st.st_mode & 0o7777)
            mtimes.append(st.st_mtime_ns)
    finally:
        dirs.close()
    hashes = [file_hash(data) for data in contents]
    conn.send(Files(sizes=[len(data) for data in contents], modes=modes, mtimes=mtimes,
                    hashes=hashes, stream=stream))
    if total:
        await conn.send_data(stream, 0, b"".join(contents))
    done = Done(path=req.path, size=total, count=len(contents), stream=stream)
    conn.send(done)
    await conn.drain()
    for where, data, hash_ in zip(shown, contents, hashes, strict=True):
        on_file(where, len(data), hash_)
    return done
