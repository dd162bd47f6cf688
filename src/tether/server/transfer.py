"""Transfers for one stream each: ``put`` (store a file, directory or symlink), ``get`` (send a
file) and ``list`` (describe a tree for a recursive get). Every disk access goes through the
client's :class:`tether.storage.area.FileArea`; this module speaks the protocol.

A put writes to a partial file and commits it only when the client's hash matches ours; a get
hashes as it sends and reports a source that grew or shrank instead of truncating silently.
"""

from __future__ import annotations

import asyncio
import posixpath
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from tether.errors import BadRequest
from tether.net.framed import FramedConnection
from tether.protocol import (
    Begin,
    Commit,
    Done,
    Entries,
    Entry,
    Get,
    List,
    Message,
    Meta,
    Put,
    Ready,
)
from tether.server.diskpool import Lease, Offload
from tether.server.diskpool import inline as _inline
from tether.storage.area import EntryInfo, FileArea, Hold
from tether.storage.batch import SEND_FILES, header_cost
from tether.storage.partial import PartialFile
from tether.storage.source import CHUNK, SourceFile, digest

# a bound on one entries header (within MAX_HEADER even for a single entry whose path and link
# target are each 4,096 bytes of characters JSON escapes)
ENTRIES_HEADER = 60 * 1024


class PutTransfer:
    """Receives one entry of a put."""

    def __init__(self, conn: FramedConnection, stream: int, req: Put, area: FileArea,
                 max_upload: int = 0, on_done: Callable[[Done], None] | None = None,
                 offload: Offload = _inline) -> None:
        self.offload = offload
        self.max_upload = max_upload
        self.on_done = on_done
        self.conn = conn
        self.stream = stream
        self.req = req
        self.area = area
        self.partial: PartialFile | None = None
        self.shown = req.path

    async def start(self) -> None:
        """Prepare the destination; for a file, wait for data (after ``ready`` if resuming)."""
        req = self.req
        if req.kind == "file":
            await self._start_file()
        elif req.kind == "dir":
            self._make_dir()
        elif req.kind == "symlink":
            self._make_symlink()
        else:
            raise BadRequest(f"unknown entry kind {req.kind[:20]!r}")

    async def _start_file(self) -> None:
        req = self.req
        if req.size < 0:
            raise BadRequest("negative size")
        if self.max_upload and req.size > self.max_upload:
            raise BadRequest(f"a file of {req.size} bytes exceeds this server's upload limit "
                             f"of {self.max_upload} bytes")
        # a kept partial is hashed here, up to its size: off the loop
        self.partial, self.shown = await self.offload(
            lambda: self.area.open_put(req.path, req.name, exists_ok=req.force or req.rename,
                                       resume=req.resume),
            cleanup=lambda opened: opened[0].close())
        if req.resume:
            try:
                self.conn.send(Ready(offset=self.partial.offset,
                                     prefix_hash=self.partial.prefix_hash, stream=self.stream))
            except BaseException:  # the connection is gone: the partial is nobody's to hold
                self.abandon()
                raise

    def _make_dir(self) -> None:
        self.shown, created = self.area.make_dir(self.req.path, self.req.name, self.req.mode)
        self._done(0, "", created=created)

    def _make_symlink(self) -> None:
        req = self.req
        if req.target is None:
            raise BadRequest("symlink without a target")
        self.shown = self.area.make_symlink(req.path, req.name, req.target, req.force)
        self._done(0, "")

    def _done(self, size: int, hash_: str, resumed_from: int = 0, created: bool = False) -> None:
        done = Done(path=self.shown, size=size, hash=hash_, resumed_from=resumed_from,
                    created=created, stream=self.stream)
        self.conn.send(done)
        if self.on_done is not None:
            self.on_done(done)

    # --- events from the client ----------------------------------------------------------------
    # The protocol core lets DATA, begin and commit through only in their order (the put table
    # in protocol/streams.py): DATA after begin (when resuming) and before commit, and only
    # while the file is open here.

    def feed(self, data: bytes | bytearray) -> None:
        try:
            assert self.partial is not None
            if self.partial.written + len(data) > self.req.size:
                raise BadRequest(f"more data than the announced {self.req.size} bytes")
            self.partial.write(data)
        finally:
            self.conn.consumed(self.stream, len(data))

    def handle(self, msg: Message) -> Awaitable[None] | None:
        """``begin`` is handled here; for ``commit``, the work to finish the put (its fsync
        runs off the loop), for the session to run as a task."""
        partial = self.partial
        assert partial is not None
        if isinstance(msg, Begin):
            if msg.offset == 0 and partial.offset:
                partial.restart()
            elif msg.offset != partial.offset:
                raise BadRequest(f"begin at {msg.offset}, but {partial.offset} bytes are kept")
        elif isinstance(msg, Commit):
            if msg.size != partial.written or msg.size != self.req.size:
                raise BadRequest(f"commit of {msg.size} bytes, but {partial.written} arrived")
            self.partial = None  # the commit owns it now: abandon() must not close it
            return self._commit(partial, msg)
        return None

    async def _commit(self, partial: PartialFile, msg: Commit) -> None:
        req = self.req
        resumed = partial.offset
        owner = _Owner()

        def commit() -> str:  # on a pool thread, unless the stream ended before it started
            if not owner.claim("thread"):
                return ""
            try:
                return partial.commit(msg.hash, req.mode & 0o1777, req.mtime_ns,
                                      force=req.force, rename=req.rename)
            finally:
                partial.close()

        try:
            final = await self.offload(commit)
        finally:
            if owner.claim("loop"):  # cancelled before the thread began: nothing uses it
                partial.close()
        self.shown = posixpath.join(posixpath.dirname(self.shown), final)
        self._done(msg.size, msg.hash, resumed)

    def abandon(self) -> None:
        """The stream ended early: keep the partial for a later resume (if it holds anything)."""
        if self.partial is not None:
            if self.partial.written == 0:
                self.partial.discard()
            self.partial.close()
            self.partial = None


class _Owner:
    """Who closes a partial whose commit was handed to a thread: the first to claim it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = ""

    def claim(self, who: str) -> bool:
        with self._lock:
            if not self._owner:
                self._owner = who
            return self._owner == who


async def send_file(conn: FramedConnection, stream: int, req: Get, area: FileArea,
                    offload: Offload = _inline) -> Done:
    """Stream one file: meta, data from the agreed offset, then done with the full hash."""
    # opened and its prefix up to the client's offset hashed off the loop; cancelled while
    # that runs, the source is closed once the thread is done with it
    source, (start, hasher) = await offload(_open_at_offset, area, req,
                                            cleanup=lambda opened: opened[0].close())
    lease = Lease(source.close)  # a chunk is read (and hashed) on the pool while one is sent
    reading: asyncio.Future[bytes] | None = None
    try:
        conn.send(Meta(size=source.size, mode=source.mode, mtime_ns=source.mtime_ns,
                       offset=start, stream=stream))
        pos = start
        while pos < source.size:
            chunk = await (reading or offload(lease.call, _read_chunk, source, hasher, pos))
            pos += len(chunk)
            reading = asyncio.ensure_future(offload(lease.call, _read_chunk, source, hasher,
                                                    pos)) if pos < source.size else None
            await conn.send_data(stream, 0, chunk)
        await offload(lease.call, source.check_end)
        done = Done(path=req.path, size=source.size, hash=digest(hasher), resumed_from=start,
                    stream=stream)
        conn.send(done)
        await conn.drain()
        return done
    finally:
        if reading is not None:
            reading.cancel()
        lease.close()


def _read_chunk(source: SourceFile, hasher: Any, pos: int) -> bytes:
    """The next chunk of a file being sent, added to its hash (on a pool thread)."""
    data = b"".join(source.chunks(pos, min(source.size, pos + CHUNK)))
    hasher.update(data)
    return data


def _open_at_offset(area: FileArea, req: Get) -> tuple[SourceFile, tuple[int, Any]]:
    source = area.open_source(req.path)
    try:
        return source, source.resume_point(req.offset, req.prefix_hash)
    except BaseException:
        source.close()
        raise


async def send_listing(conn: FramedConnection, stream: int, req: List, area: FileArea,
                       slots: asyncio.Semaphore, hold: Hold | None = None) -> Done:
    """Describe the tree at ``req.path``: one ``entry`` per file, directory or symlink, or
    (``batched``) many to an ``entries``; ``slots`` bounds the listings of one connection
    that read at once (each holds two descriptors per level while its reader lags, told to
    ``hold``, which may refuse them)."""
    async with slots:
        return await _listing(conn, stream, req, area, hold)


async def _listing(conn: FramedConnection, stream: int, req: List, area: FileArea,
                   hold: Hold | None) -> Done:
    count = 0
    group = _EntryGroup()
    for info in area.walk(req.path, hold):
        count += 1
        if not req.batched:
            conn.send(Entry(parts=info.parts, kind=info.kind, size=info.size, mode=info.mode,
                            mtime_ns=info.mtime_ns, target=info.target, stream=stream))
        else:
            name = "/".join(info.parts)
            cost = header_cost(name) + header_cost(info.target or "")
            if group.names and (len(group.names) >= SEND_FILES
                                or group.cost + cost > ENTRIES_HEADER):
                conn.send(group.take(stream))
            group.add(name, info, cost)
        if count % 256 == 0:
            await conn.drain()
            await asyncio.sleep(0)
    if group.names:
        conn.send(group.take(stream))
    done = Done(path=req.path, count=count, stream=stream)
    conn.send(done)
    await conn.drain()
    return done


class _EntryGroup:
    """Entries gathered for one ``entries`` message."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.sizes: list[int] = []
        self.modes: list[int] = []
        self.mtimes: list[int] = []
        self.targets: list[str | None] = []
        self.cost = 0

    def add(self, name: str, info: EntryInfo, cost: int) -> None:
        self.names.append(name)
        self.kinds.append(info.kind)
        self.sizes.append(info.size)
        self.modes.append(info.mode)
        self.mtimes.append(info.mtime_ns)
        self.targets.append(info.target)
        self.cost += cost

    def take(self, stream: int) -> Entries:
        """The message for what was gathered; the group starts empty again."""
        msg = Entries(names=self.names, kinds=self.kinds, sizes=self.sizes, modes=self.modes,
                      mtimes=self.mtimes, targets=self.targets, stream=stream)
        self._reset()
        return msg
