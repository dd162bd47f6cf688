"""The source side of a sync (the client in a push, the server in a pull): list the tree in
bounded pieces, at most 8 ahead of the destination's answers, and send each wanted file — small
ones many to a ``sync_batch``, large ones whole (resumed where a partial was kept) or as a delta
against the destination's signature. A file that changes while it is read is committed as
``changed``, so the destination never stores it torn (docs/PROTOCOL.md, "Sync").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from stat import S_ISDIR, S_ISREG
from typing import TYPE_CHECKING, Any

from tether.errors import NotFound, RemoteProtocolError, SourceChanged
from tether.protocol import Data, Done, Message
from tether.protocol.sync_messages import (
    LIST_WINDOW,
    MAX_LIST,
    SyncBatch,
    SyncCommit,
    SyncDeleted,
    SyncFile,
    SyncList,
    SyncListed,
    SyncSent,
    SyncWant,
)
from tether.storage.batch import SEND_BYTES, SEND_FILES, SMALL_FILE, header_cost
from tether.storage.errors import disk_error
from tether.storage.hashcache import NO_HASHES, TreeHashes, save_trees
from tether.storage.names import link_stays_inside
from tether.storage.source import CHUNK, digest, file_hash, new_hasher, read_whole
from tether.storage.tree import SourceTree
from tether.syncing.common import (
    LIST_HEADER,
    MAX_SIGNATURE,
    Endpoint,
    Filters,
    NoProgress,
    Offload,
    Progress,
    SyncOptions,
    SyncResult,
    off_loop,
)

if TYPE_CHECKING:
    from tether.storage.delta import Delta, Op

SEND_AT_ONCE = 1024 * 1024  # delta records gathered into one DATA frame
# what opening a listed file raises when it is gone since (the tree's opens word OSErrors as
# tether errors): reported as changed, as rsync reports a vanished file, not a failed sync
GONE = (OSError, NotFound)


@dataclass(frozen=True)
class Root:
    """One source: a tree (a directory, listed under ``name``, ``""``: its contents at the
    root) or, with ``file``, the single file ``file`` in the tree's directory."""

    tree: SourceTree
    name: str
    file: str | None = None
    hashes: TreeHashes = NO_HASHES


class Entry:
    """One listed entry, kept to send its content when it is wanted."""

    __slots__ = ("ctime", "kind", "mode", "mtime", "name", "parts", "root", "size")

    def __init__(self, root: Root, parts: tuple[str, ...], name: str, kind: str,
                 st: os.stat_result) -> None:
        self.root, self.parts, self.name, self.kind = root, parts, name, kind
        self.size = st.st_size if kind == "file" else 0
        self.mode = st.st_mode & 0o7777
        self.mtime = st.st_mtime_ns
        self.ctime = st.st_ctime_ns


def _joined(prefix: str, parts: tuple[str, ...]) -> str:
    return "/".join((prefix, *parts)) if prefix else "/".join(parts)


def walk_roots(roots: list[Root], opts: SyncOptions
               ) -> Iterator[tuple[Entry, str, str]]:
    """(entry, symlink target, hash) of every entry the sources list, in order, filtered."""
    filters = Filters(opts.filters)
    seen: set[str] = set()
    several = len(roots) > 1  # only then can two sources list the same name
    for root in roots:
        if root.file is not None:
            if root.name not in seen and not filters.excluded(root.name, False):
                seen.add(root.name)
                st = os.lstat(root.file, dir_fd=root.tree.dirs.root_fd)
                entry = Entry(root, (root.file,), root.name, "file", st)
                yield entry, "", _hash(entry, st, opts)
            continue
        if root.name:
            st = os.fstat(root.tree.dirs.root_fd)
            if root.name not in seen:
                seen.add(root.name)
                yield Entry(root, (), root.name, "dir", st), "", ""

        def keep(parts: tuple[str, ...], kind: str, root: Root = root) -> bool:
            return not filters.excluded(_joined(root.name, parts), kind == "dir")

        prefix = f"{root.name}/" if root.name else ""
        for parts, st, target in root.tree.walk(keep if filters.spec is not None else None):
            name = prefix + "/".join(parts)
            if several:
                if name in seen:
                    continue  # two sources with the same entry: the first one's wins, as rsync
                seen.add(name)
            mode = st.st_mode
            kind = "file" if S_ISREG(mode) else "dir" if S_ISDIR(mode) else "symlink"
            if kind == "symlink" and opts.safe_links and not link_stays_inside(
                    name.count("/"), target):
                continue  # --safe-links: a link leaving the tree is not sent
            entry = Entry(root, parts, name, kind, st)
            yield entry, target, _hash(entry, st, opts) if kind == "file" else ""


def _hash(entry: Entry, st: os.stat_result, opts: SyncOptions) -> str:
    """The file's content hash for ``--checksum`` (the tree's hash cache's, or read), else
    ``""``."""
    if not opts.checksum:
        return ""
    return entry.root.hashes.hashed(st, entry.root.tree.open_file, entry.parts)


_LIST_KEYS = ("names", "kinds", "sizes", "modes", "mtimes", "targets", "hashes")


def list_messages(found: Iterator[tuple[Entry, str, str]], entries: list[Entry]
                  ) -> Iterator[dict[str, list]]:  # type: ignore[type-arg]
    """The fields of each sync_list: at most 256 entries and ~40 KiB of header each; every
    entry is appended to ``entries`` (its number is its place there)."""
    columns: tuple[list, ...] = ()  # type: ignore[type-arg]
    cost = 0
    for entry, target, hash_ in found:
        name = entry.name
        # header_cost's bound, without encoding the name when it is printable ASCII
        item_cost = (2 * len(name) + 120 if name.isascii() and name.isprintable()
                     else header_cost(name)) + (header_cost(target) if target else 0) + len(
            hash_)
        if columns and (len(columns[0]) >= MAX_LIST or cost + item_cost > LIST_HEADER):
            yield dict(zip(_LIST_KEYS, columns, strict=True))
            columns, cost = (), 0
        if not columns:
            columns = ([], [], [], [], [], [], [])
        entries.append(entry)
        names, kinds, sizes, modes, mtimes, targets, hashes = columns
        names.append(name)
        kinds.append(entry.kind)
        sizes.append(entry.size)
        modes.append(entry.mode)
        mtimes.append(entry.mtime)
        targets.append(target)
        hashes.append(hash_)
        cost += item_cost
    if columns:
        yield dict(zip(_LIST_KEYS, columns, strict=True))


def read_small(entry: Entry) -> bytes | None:
    """A small file's bytes, or None if it is not what was listed (gone, or changed)."""
    try:
        fd, before = entry.root.tree.open_small(entry.parts)
    except GONE:
        return None
    try:
        if not S_ISREG(before.st_mode) or not _same(before, entry):
            return None
        data = read_whole(fd, entry.size, entry.name)
        if not _same(os.fstat(fd), entry):
            return None
        return data
    except (SourceChanged, OSError):
        return None
    finally:
        os.close(fd)


class Listing:
    """What a :class:`SourceSide` lists and sends small files from: its sources walked lazily
    into bounded lists, a small file read when it is wanted. A push to several hosts gives every
    host's side one shared subclass instead (``tether.client.syncs.SharedListing``), so the tree
    is walked, and each small file read, once for all of them: entry numbers are the same on
    every host, and ``entries`` is then the one shared list."""

    def __init__(self, roots: list[Root], opts: SyncOptions) -> None:
        self.entries: list[Entry] = []
        self._fields = list_messages(walk_roots(roots, opts), self.entries)

    def lists(self) -> Iterator[tuple[int, dict[str, list]]]:  # type: ignore[type-arg]
        """(number of its first entry, fields) of each sync_list in order; a list's entries
        are in ``entries`` once it is yielded."""
        first = 0
        for fields in self._fields:
            yield first, fields
            first += len(fields["names"])

    def small(self, index: int, entry: Entry) -> bytes | None:
        """Entry ``index``'s bytes, or None if it is not what was listed."""
        return read_small(entry)


class SourceSide:
    """Drives the source's half of one sync stream."""

    def __init__(self, ep: Endpoint, roots: list[Root], opts: SyncOptions, *, client: bool,
                 result: SyncResult | None = None, progress: Progress | None = None,
                 listing: Listing | None = None, trusted: bool = False,
                 offload: Offload | None = None) -> None:
        self.ep = ep
        self.offload = offload  # where a large file's delta is made (None: asyncio's threads)
        # TLS authenticates every byte: a batch's files go without a hash (a fifth of a first
        # sync's sending), which a receiver over --plaintext would refuse
        self.hash_small = not trusted
        self.roots = roots
        self.opts = opts
        self.client = client  # a pushing client ends with sync_sent; a pulled server with done
        self.result = result or SyncResult()
        self.progress = progress or NoProgress()
        self.listing = listing or Listing(roots, opts)
        self.entries = self.listing.entries
        self.ranges: deque[tuple[int, int]] = deque()  # (first, count) of unanswered lists
        self.lists_sent: list[int] = []  # the first entry of each list sent
        self.work: asyncio.Queue[tuple[SyncWant, bytes, int]] = asyncio.Queue(LIST_WINDOW)
        self.deleted: list[str] = []
        self.planned = [0, 0]  # files and bytes wanted so far (the progress display's totals)

    async def run(self) -> SyncResult:
        """List and send (the writer) while the answers are read (the reader); whichever
        fails first ends the other, so neither waits for what will never come."""
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        try:
            await _first_failure(writer, reader)
            if self.client:
                self.ep.send(SyncSent(stream=self.ep.stream))
                await reader  # the server's sync_deleted, then its done
                await self._save_hashes()
            else:
                reader.cancel()
                await self._save_hashes()  # before done: the next sync finds it
                self.ep.send(Done(path="", count=len(self.entries), stream=self.ep.stream))
                await self.ep.drain()
        finally:
            for task in (reader, writer):
                if not task.done():
                    task.cancel()
        return self.result

    async def _save_hashes(self) -> None:
        """Save what the trees' hash caches learned: with ``--checksum`` and no filters every
        file was looked up (the caches then mirror the trees); else what they held is kept,
        up to twice the files listed (entries of files changed since go first)."""
        trees = [root.hashes for root in self.roots if root.hashes.unsaved]
        if trees:
            await asyncio.to_thread(save_trees, trees, self.opts.checksum and not self.opts.filters,
                                    2 * len(self.entries) + 1024)

    # --- listing and sending ---------------------------------------------------------------------

    async def _write(self) -> None:
        lists = self.listing.lists()
        listed = False
        served = 0
        while True:
            if not listed and len(self.ranges) < LIST_WINDOW:
                item = next(lists, None)
                if item is None:
                    listed = True
                    self.ep.send(SyncListed(count=len(self.entries), stream=self.ep.stream))
                else:
                    first, fields = item
                    self.ranges.append((first, len(fields["names"])))
                    self.lists_sent.append(first)
                    self.ep.send(SyncList(**fields, stream=self.ep.stream))
                await self.ep.drain()
                continue
            if listed and served == len(self.lists_sent):
                return  # every list answered and every answer served
            want, sigs, first = await self.work.get()
            served += 1
            await self._serve(want, sigs, first)

    async def _serve(self, want: SyncWant, sigs: bytes, first: int) -> None:
        if self.client:
            self.result.note_list([entry.name for entry in self.entries[first:first + len(
                want.actions)]], want.actions)
        batch: list[tuple[int, bytes]] = []
        batch_bytes = pos = 0
        for index, sig_size, offset, prefix in zip(want.wanted, want.sigs, want.offsets,
                                                   want.prefixes, strict=True):
            entry = self.entries[index]
            if sig_size:
                await self._send_delta(index, entry, sigs[pos:pos + sig_size])
                pos += sig_size
            elif entry.size <= SMALL_FILE and not offset:
                data = self.listing.small(index, entry)
                if data is None:
                    self._changed(index, entry)  # committed as changed: not what was listed
                    continue
                if batch and (len(batch) >= SEND_FILES
                              or batch_bytes + len(data) > SEND_BYTES):
                    await self._send_batch(batch)
                    batch, batch_bytes = [], 0
                batch.append((index, data))
                batch_bytes += len(data)
            else:
                await self._send_whole(index, entry, offset, prefix)
        if batch:
            await self._send_batch(batch)

    def _changed(self, index: int, entry: Entry) -> None:
        self.result.changed.append(entry.name)
        self.ep.send(SyncFile(index=index, size=0, stream=self.ep.stream))
        self.ep.send(SyncCommit(index=index, hash="", changed=True, stream=self.ep.stream))

    async def _send_batch(self, batch: list[tuple[int, bytes]]) -> None:
        self.ep.send(SyncBatch(indices=[i for i, _ in batch], sizes=[len(d) for _, d in batch],
                               hashes=[file_hash(d) if self.hash_small else "" for _, d in batch],
                               stream=self.ep.stream))
        data = b"".join(d for _, d in batch)
        label = self.entries[batch[0][0]].name
        self.progress.file_started(label, len(data), 0)
        if data:
            await self.ep.send_data(data)
        self.progress.advanced(label, len(data))
        self.progress.file_done(label)
        self.result.sent += len(batch)
        self.result.bytes_sent += len(data)

    async def _send_whole(self, index: int, entry: Entry, offset: int, prefix: str) -> None:
        try:
            fd = entry.root.tree.open_file(entry.parts)
        except GONE:
            self._changed(index, entry)
            return
        try:
            started = time.time_ns()
            st = os.fstat(fd)
            if not _same(st, entry):
                self._changed(index, entry)
                return
            start, hasher = self._resume_point(fd, entry, offset, prefix)
            self.ep.send(SyncFile(index=index, size=entry.size, offset=start,
                                  stream=self.ep.stream))
            self.progress.file_started(entry.name, entry.size, start)
            changed = False
            pos = start
            while pos < entry.size:
                chunk = os.pread(fd, min(CHUNK, entry.size - pos), pos)
                if not chunk:
                    changed = True
                    break
                hasher.update(chunk)
                await self.ep.send_data(chunk)
                pos += len(chunk)
                self.result.bytes_sent += len(chunk)
                self.progress.advanced(entry.name, len(chunk))
            changed = changed or bool(os.pread(fd, 1, entry.size)) or not _same(
                os.fstat(fd), entry)
        except OSError as exc:
            raise disk_error(exc, entry.name, "read") from exc
        finally:
            os.close(fd)
        hash_ = digest(hasher)
        if not changed:
            entry.root.hashes.note(st, hash_, started)
        self._commit(index, entry, hash_, changed)

    def _resume_point(self, fd: int, entry: Entry, offset: int, prefix: str) -> tuple[int, Any]:
        hasher = new_hasher()
        if 0 < offset <= entry.size and prefix:
            pos = 0
            while pos < offset:
                chunk = os.pread(fd, min(CHUNK, offset - pos), pos)
                if not chunk:
                    break
                hasher.update(chunk)
                pos += len(chunk)
            if pos == offset and digest(hasher.copy()) == prefix:
                return offset, hasher
            hasher = new_hasher()
        return 0, hasher

    def _commit(self, index: int, entry: Entry, hash_: str, changed: bool) -> None:
        self.ep.send(SyncCommit(index=index, hash=hash_, changed=changed, stream=self.ep.stream))
        self.progress.file_done(entry.name)
        if changed:
            self.result.changed.append(entry.name)
        else:
            self.result.sent += 1

    async def _send_delta(self, index: int, entry: Entry, sig: bytes) -> None:
        try:
            fd = entry.root.tree.open_file(entry.parts)
        except GONE:
            self._changed(index, entry)
            return
        try:
            started = time.time_ns()
            st = os.fstat(fd)
            if not _same(st, entry):
                self._changed(index, entry)
                return
            self.ep.send(SyncFile(index=index, size=entry.size, delta=True,
                                  stream=self.ep.stream))
            self.progress.file_started(entry.name, entry.size, 0)
            delta = await self._stream_delta(fd, entry, sig)
            changed = delta is None or not _same(os.fstat(fd), entry)
        finally:
            os.close(fd)
        if delta is not None and not changed:
            self.result.bytes_matched += delta.matched
            self.progress.advanced(entry.name, delta.matched)
            entry.root.hashes.note(st, delta.hash, started)
        self._commit(index, entry, "" if delta is None else delta.hash, changed)

    async def _stream_delta(self, fd: int, entry: Entry, sig: bytes) -> Delta | None:
        """Cut the file on a worker thread and send its records as they are found, so that
        the destination builds the start while the rest is cut; None if the file changed."""
        from tether.storage.delta import encode, make_delta  # large changed files only

        loop = asyncio.get_running_loop()
        found: asyncio.Queue[list[Op] | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(ops: list[Op]) -> None:
            if stop.is_set():
                raise SourceChanged(f"{entry.name}: no longer sent")
            loop.call_soon_threadsafe(found.put_nowait, ops)

        def cut() -> Delta:
            try:
                return make_delta(fd, entry.size, sig, entry.name, emit)
            finally:
                loop.call_soon_threadsafe(found.put_nowait, None)

        job = asyncio.ensure_future(off_loop(self.offload, cut))
        try:
            while (ops := await found.get()) is not None:
                out = bytearray()
                for record in encode(ops, fd, entry.name):
                    out += record
                    if len(out) >= SEND_AT_ONCE:
                        await self._send_records(entry, out)
                        out = bytearray()
                if out:
                    await self._send_records(entry, out)
            return await job
        except SourceChanged:  # read here or in the thread: the rest is not cut
            return None
        finally:
            stop.set()
            job.cancel()  # (done already on the way out of the loop above)
            await asyncio.wait([job])  # the thread is done with fd before it is closed
            if not job.cancelled():
                job.exception()  # retrieved: what failed here is what the caller hears

    async def _send_records(self, entry: Entry, out: bytearray) -> None:
        await self.ep.send_data(out)
        self.result.bytes_sent += len(out)
        self.progress.advanced(entry.name, len(out))

    # --- what the destination says -------------------------------------------------------------

    async def _read(self) -> None:
        await self._read_answers()

    async def _read_answers(self) -> None:
        while True:
            event = await self.ep.next()
            if isinstance(event, SyncWant):
                await self.work.put(await self._answer(event))
            elif isinstance(event, SyncDeleted):
                for name in event.names:
                    self.result.note(name, "delete")
                self.result.deleted += len(event.names)
            elif isinstance(event, Done):
                if self.ranges or not self.client:
                    raise RemoteProtocolError("the destination ended the sync early")
                return
            else:
                raise RemoteProtocolError(f"unexpected {_what(event)} on a sync stream")

    async def _answer(self, want: SyncWant) -> tuple[SyncWant, bytes, int]:
        """The want with its signatures, checked against the list it answers."""
        if not self.ranges:
            raise RemoteProtocolError("a sync_want answering no sync_list")
        first, count = self.ranges.popleft()
        if len(want.actions) != count:
            raise RemoteProtocolError(f"a sync_want answered {len(want.actions)} entries of a "
                                      f"list of {count}")
        previous = -1
        for index, sig_size in zip(want.wanted, want.sigs, strict=True):
            if not first <= index < first + count or index <= previous:
                raise RemoteProtocolError(f"a sync_want names entry {index}, not one of its "
                                          f"list's in order")
            if self.entries[index].kind != "file" or sig_size > MAX_SIGNATURE:
                raise RemoteProtocolError(f"a sync_want asks for entry {index} wrongly")
            previous = index
        self.planned[0] += len(want.wanted)
        self.planned[1] += sum(self.entries[index].size for index in want.wanted)
        self.progress.total(*self.planned)  # grows as the lists are answered
        need = sum(want.sigs)
        sigs = bytearray()
        while len(sigs) < need:
            event = await self.ep.next()
            if not isinstance(event, Data) or len(sigs) + len(event.data) > need:
                raise RemoteProtocolError("a sync_want's signatures did not follow it whole")
            sigs += event.data
        self.result.bytes_signatures += need
        return want, bytes(sigs), first


async def _first_failure(main: asyncio.Task[None], helper: asyncio.Task[None]) -> None:
    """Wait for ``main`` to finish; if ``helper`` fails first, cancel ``main`` and raise the
    helper's error (``helper`` finishing without error while ``main`` runs is fine)."""
    await asyncio.wait({main, helper}, return_when=asyncio.FIRST_COMPLETED)
    if main.done():
        await main  # its own error, if any; the helper's is the caller's to collect
        return
    if not helper.cancelled() and helper.exception() is not None:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
        raise helper.exception()  # type: ignore[misc]
    await main


def _same(st: os.stat_result, entry: Entry) -> bool:
    """Whether a file is still as it was listed (size, mtime and ctime)."""
    return (st.st_size == entry.size and st.st_mtime_ns == entry.mtime
            and st.st_ctime_ns == entry.ctime)


def _what(event: Message | Data) -> str:
    return "data" if isinstance(event, Data) else repr(event.TYPE)


__all__ = ["Entry", "Listing", "Root", "SourceSide", "read_small"]
