"""``sync`` on the server: the destination of a push or the source of a pull, one stream each
(docs/PROTOCOL.md, "Sync"). The session feeds the stream's events into a bounded queue that
the side (:mod:`tether.syncing`) reads at its own pace; every path goes through the client's
:class:`~tether.storage.area.FileArea` (confinement, no-follow walks)."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath

from tether.errors import BadRequest
from tether.net.framed import FramedConnection
from tether.protocol import Data, Message
from tether.protocol.sync_messages import (
    Sync,
    SyncBatch,
    SyncCommit,
    SyncFile,
    SyncList,
    SyncListed,
    SyncSent,
    SyncWant,
)
from tether.storage.area import FileArea
from tether.storage.hashcache import HashCaches
from tether.storage.tree import DestTree, SourceTree
from tether.syncing.common import Offload, SyncOptions
from tether.syncing.dest import DestSide
from tether.syncing.source import Root, SourceSide

# what a client may send on an open sync stream (the session routes them to its SyncStream)
SYNC_MESSAGES = (SyncList, SyncListed, SyncWant, SyncFile, SyncCommit, SyncBatch, SyncSent)
MAX_QUEUED = 65_536  # events waiting for a sync's side (DATA is bounded by its window too)


class SyncStream:
    """One sync stream: the session's handler (feed, handle, abandon) and the side's
    endpoint (send, send_data, drain, next)."""

    def __init__(self, conn: FramedConnection, stream: int, *, tls: bool = True) -> None:
        self.conn = conn
        self.stream = stream
        # TLS carries the connection (in a privileged-separation worker too, whose own socket
        # is the parent's relay): a sync's small files may go without hashes
        self.tls = tls
        self.queue: asyncio.Queue[Message | Data] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    # the session's side
    def feed(self, data: bytes | bytearray) -> None:
        self._put(Data(self.stream, 0, data))

    def handle(self, msg: Message) -> None:
        self._put(msg)

    def _put(self, event: Message | Data) -> None:
        if self.queue.qsize() >= MAX_QUEUED:
            raise BadRequest(f"more than {MAX_QUEUED} messages ahead of the sync")
        self.queue.put_nowait(event)

    def abandon(self) -> None:
        if self.task is not None:
            self.task.cancel()

    # the side's
    def send(self, msg: Message) -> None:
        self.conn.send(msg)

    async def send_data(self, data: bytes | bytearray | memoryview) -> None:
        await self.conn.send_data(self.stream, 0, memoryview(data))

    async def drain(self) -> None:
        await self.conn.drain()

    async def next(self) -> Message | Data:
        event = await self.queue.get()
        if isinstance(event, Data):
            self.conn.consumed(self.stream, len(event.data))
        return event


def options(msg: Sync) -> SyncOptions:
    return SyncOptions(checksum=msg.checksum, delete=msg.delete, dry_run=msg.dry_run,
                       safe_links=msg.safe_links, filters=tuple(msg.filters),
                       hash_cache=msg.hash_cache)


async def receive(ep: SyncStream, msg: Sync, area: FileArea, caches: HashCaches,
                  offload: Offload | None = None) -> None:
    """A push: store into ``msg.path``."""
    opts = options(msg)

    def opener(single: bool, first: str) -> tuple[DestTree, str | None]:
        fd, name = area.sync_dest(msg.path, first if single else None, create=not opts.dry_run)
        return DestTree(fd, msg.path, area.reserved), name

    side = DestSide(ep, opener, opts, client=False, single=msg.single,
                    links_inside=area.confined, trusted=ep.tls, caches=caches, offload=offload)
    try:
        await side.run()
    finally:
        await save_failed(caches)


async def send(ep: SyncStream, msg: Sync, area: FileArea, caches: HashCaches,
               offload: Offload | None = None) -> None:
    """A pull: list ``msg.sources`` and send what the client wants."""
    roots: list[Root] = []
    try:
        for path, name in zip(msg.sources, msg.names, strict=True):
            fd, file = area.sync_source(path)
            tree = SourceTree(fd, path, area.reserved)
            hashes = caches.tree(fd, whole=file is None)
            if file is not None:
                roots.append(Root(tree, name or posixpath.basename(file), file, hashes))
            else:
                roots.append(Root(tree, name, hashes=hashes))
        if msg.checksum:  # every file will be looked up: load off the event loop
            await asyncio.to_thread(caches.load)
        await SourceSide(ep, roots, options(msg), client=False, trusted=ep.tls,
                         offload=offload).run()
    finally:
        for root in roots:
            with contextlib.suppress(OSError):
                root.tree.close()
        await save_failed(caches)


async def save_failed(caches: HashCaches) -> None:
    """Keep what a failed sync learned, off the event loop (a tree's cache may be large); a
    side that ended saved its caches before its last message."""
    if caches.unsaved:
        await asyncio.to_thread(caches.save, False)


async def run_sync(ep: SyncStream, msg: Sync, area: FileArea, cache_dir: str | None = None,
                   offload: Offload | None = None) -> None:
    """The server's side of one sync: the destination of a push, the source of a pull;
    ``cache_dir``: where the server keeps its hash caches (under its own TETHER_HOME);
    ``offload``: the disk pool a large file's work runs on (the client identity's share)."""
    caches = HashCaches(cache_dir if msg.hash_cache else None)
    await (receive(ep, msg, area, caches, offload) if msg.push
           else send(ep, msg, area, caches, offload))
