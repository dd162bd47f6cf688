"""The destination side of a sync (the server in a push, the client in a pull): check every
listed entry, compare it with what is there, make directories and symlinks at once, answer each
list with what it wants (with signatures of the old copies that deltas will reuse), store what
arrives — small files durable together, large ones built in their partial and verified whole —
and, with ``--delete``, remove afterwards what the source no longer has. Nothing a peer names can
reach outside the tree: names are checked and every walk is no-follow (docs/PROTOCOL.md, "Sync").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable

from tether.errors import BadRequest, RemoteProtocolError, TetherError, UnsafePath
from tether.protocol import Data, Done
from tether.protocol.sync_messages import (
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
from tether.storage.batch import SMALL_FILE
from tether.storage.delta import DELTA_MIN, signature
from tether.storage.hashcache import NO_HASHES, HashCaches
from tether.storage.names import link_stays_inside
from tether.storage.partial import PartialFile
from tether.storage.sigcache import Signatures
from tether.storage.source import file_hash
from tether.storage.tree import PART_SUFFIX, DestTree, sync_name
from tether.syncing.common import (
    MAX_ENTRIES,
    RESUME_MIN,
    Endpoint,
    Filters,
    NoProgress,
    Offload,
    Progress,
    SyncOptions,
    SyncResult,
    off_loop,
)
from tether.syncing.incoming import BatchIn, Incoming, Wanted
from tether.syncing.source import _first_failure
from tether.syncing.storer import File, Storer

# (a single file?, the first name listed) -> (the tree, the name the single file is stored as)
Opener = Callable[[bool, str], tuple[DestTree, str | None]]


class DestSide:
    """Drives the destination's half of one sync stream."""

    def __init__(self, ep: Endpoint, opener: Opener, opts: SyncOptions, *, client: bool,
                 single: bool | None, links_inside: bool, result: SyncResult | None = None,
                 progress: Progress | None = None, trusted: bool = False,
                 caches: HashCaches | None = None, offload: Offload | None = None) -> None:
        self.ep = ep
        self.offload = offload  # where a large file's disk work runs (None: asyncio's threads)
        # TLS authenticates every byte: a batch's file may come without a hash (one that is
        # given is checked); over --plaintext every file must match its hash
        self.trusted = trusted
        self.opener = opener
        self.opts = opts
        self.client = client  # a pulling client; else the server of a push
        self.single = single  # None: a file if the first entry listed is one
        self.links_inside = links_inside  # symlinks must stay in the tree (or be skipped)
        self.result = result or SyncResult()
        self.progress = progress or NoProgress()
        self.filters = Filters(opts.filters)
        self.tree: DestTree | None = None
        self.caches = caches  # where the tree's hash cache is (storage/hashcache.py)
        self.hashes = NO_HASHES
        self.signatures = Signatures(caches.directory if caches is not None else None)
        self.single_name: str | None = None
        self.count = 0  # entries listed so far
        self.listed: set[str] = set()
        self.dirs: list[tuple[list[str], int, int]] = []  # (parts, mode, mtime) for the end
        self.dir_names: set[str] = {""}
        self.wanted: dict[int, Wanted] = {}
        self.answers: asyncio.Queue[tuple[SyncWant, list[Wanted | None]] | None] = (
            asyncio.Queue())
        self.incoming: tuple[int, Incoming] | None = None
        self.batch: BatchIn | None = None
        self.storer = Storer()  # small files: written on a worker thread, durable together
        self.deleted: list[str] = []
        self._answered = 0  # entries whose list was answered (lists are answered in order)
        self.planned = [0, 0]  # files and bytes wanted so far (the progress display's totals)

    async def run(self) -> SyncResult:
        writer = asyncio.create_task(self._answer_all())
        reader = asyncio.create_task(self._receive())
        try:
            await _first_failure(reader, writer)
            if self.client:
                # a server ends a pull only after every answer reached it: nothing is left to
                # send (a server that did not wait gets none; missing files are found below)
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, TetherError):
                    await writer  # an answer the ended stream could not carry is moot
            else:
                self.answers.put_nowait(None)
                await writer
            await self.storer.finish()
            self._finish()
        finally:
            for task in (reader, writer):
                if not task.done():
                    task.cancel()
            if self.incoming is not None:
                self.incoming[1].close()
            self.storer.close()
            if self.tree is not None:
                self.tree.close()
        if self.caches is not None and self.caches.unsaved:  # before done: the next sync finds it
            await asyncio.to_thread(self.caches.save, self.opts.checksum and not self.opts.filters,
                                    2 * self.count + 1024)
        if not self.client:
            await self._report()
        return self.result

    # --- receiving ---------------------------------------------------------------------------

    async def _receive(self) -> None:
        listed = False
        while True:
            event = await self.ep.next()
            if isinstance(event, SyncList):
                if listed:
                    raise RemoteProtocolError("a sync_list after sync_listed")
                self._plan(event)
            elif isinstance(event, SyncListed):
                if event.count != self.count:
                    raise RemoteProtocolError(f"the source listed {self.count} entries but "
                                              f"says {event.count}")
                listed = True
                self._open(False)
            elif isinstance(event, Data):
                await self._data(event.data)
                if self.storer.queued > self.storer.budget:
                    await self.storer.room()
            elif isinstance(event, SyncFile):
                self._start(event)
            elif isinstance(event, SyncCommit):
                await self._commit(event)
            elif isinstance(event, SyncBatch):
                self._start_batch(event)
            elif isinstance(event, SyncSent | Done):
                if not listed or self.incoming is not None or self.batch is not None:
                    raise RemoteProtocolError("the source ended the sync in the middle")
                return
            else:
                raise RemoteProtocolError(f"unexpected {event.TYPE!r} on a sync stream")

    def _take(self, index: int) -> Wanted:
        want = self.wanted.pop(index, None)
        if want is None:
            raise RemoteProtocolError(f"entry {index} was not asked for (or came twice)")
        return want

    def _start(self, msg: SyncFile) -> None:
        if self.incoming is not None or self.batch is not None:
            raise RemoteProtocolError("a sync_file before the previous file was committed")
        assert self.tree is not None
        want = self._take(msg.index)
        self.incoming = msg.index, Incoming(self.tree, want, msg)
        self.progress.file_started(want.name, msg.size, msg.offset)

    async def _data(self, data: bytes | bytearray) -> None:
        if self.batch is not None:
            self._batch_data(data)
        elif self.incoming is not None:
            incoming = self.incoming[1]
            if incoming.builder is not None:  # its copies may be a gigabyte: off the loop
                await off_loop(self.offload, incoming.feed, data)
            else:
                incoming.feed(data)
            self.result.bytes_sent += len(data)
            self.progress.advanced(incoming.want.name, len(data))
        else:
            raise RemoteProtocolError("data with no file on a sync stream")

    async def _commit(self, msg: SyncCommit) -> None:
        if self.incoming is None or self.incoming[0] != msg.index:
            raise RemoteProtocolError(f"a sync_commit of entry {msg.index}, which is not being "
                                      f"sent")
        incoming = self.incoming[1]
        self.incoming = None
        try:
            if msg.changed:
                incoming.close(discard=True)
                self.result.changed.append(incoming.want.name)
                return
            # the verification reads the whole file, and the fsync waits for the disk
            self.result.bytes_matched += await off_loop(self.offload, incoming.commit, msg,
                                                        self.signatures)
            self.result.sent += 1
        finally:
            incoming.close()
        self.progress.file_done(incoming.want.name)

    def _start_batch(self, msg: SyncBatch) -> None:
        if self.incoming is not None or self.batch is not None:
            raise RemoteProtocolError("a sync_batch before the previous file was committed")
        for index, size in zip(msg.indices, msg.sizes, strict=True):
            want = self.wanted.get(index)
            if want is None or want.basis or size > SMALL_FILE:
                raise RemoteProtocolError(f"entry {index} does not belong in a sync_batch")
        self.batch = BatchIn(msg)
        self._batch_data(b"")

    def _batch_data(self, data: bytes | bytearray) -> None:
        assert self.batch is not None and self.tree is not None
        batch = self.batch
        self.result.bytes_sent += len(data)
        files: list[File] = []
        dirs: dict[tuple[str, ...], int] = {}  # dups: the tree's own fds may close meanwhile
        try:
            for index, content, hash_ in batch.feed(data):
                want = self._take(index)
                if (hash_ or not self.trusted) and file_hash(content) != hash_:
                    raise RemoteProtocolError(f"{want.name}: data does not match the "
                                              f"sender's hash; nothing was stored under "
                                              f"that name")
                where = tuple(want.parts[:-1])
                if where not in dirs:  # planned: looked up, so no second check
                    dirs[where] = os.dup(self.tree.looked_up_parent(want.parts)[0])
                files.append((dirs[where], want.parts[-1], content, want.mode, want.mtime))
        except BaseException:
            for fd in dirs.values():
                os.close(fd)
            raise
        if files:
            self.storer.add(files, list(dirs.values()))
        self.result.sent += len(files)
        if batch.complete:
            self.batch = None

    # --- planning ----------------------------------------------------------------------------

    def _open(self, single: bool, first: str = "") -> DestTree:
        if self.tree is None:
            self.single = single if self.single is None else self.single
            self.tree, self.single_name = self.opener(bool(self.single), first)
            if self.caches is not None:
                self.hashes = self.caches.tree(self.tree.dirs.root_fd, whole=not self.single)
        return self.tree

    def _plan(self, msg: SyncList) -> None:
        tree = self._open(msg.kinds[0] == "file" and self.count == 0, msg.names[0])
        actions: list[str] = []
        wants: list[Wanted | None] = []
        if self.count + len(msg.names) > MAX_ENTRIES:
            raise BadRequest(f"a sync of more than {MAX_ENTRIES} entries")
        filtered = self.filters.spec is not None
        for name, kind, size, mode, mtime, target, hash_ in zip(
                msg.names, msg.kinds, msg.sizes, msg.modes, msg.mtimes, msg.targets, msg.hashes,
                strict=True):
            self.count += 1
            parts = self._parts(name, kind)
            shown = "/".join(parts) if self.single else name
            if filtered and self.filters.excluded(name, kind == "dir"):
                action, want = "", None
            elif kind == "file":
                action, want = self._plan_file(tree, parts, shown, size, mode, mtime, hash_)
            elif kind == "dir":
                action, want = self._plan_dir(tree, parts, mode, mtime), None
            elif kind == "symlink":
                action, want = self._plan_link(tree, parts, target, mtime), None
            else:
                raise UnsafePath(f"the source listed {shown!r} as a {kind[:20]!r}")
            actions.append(action)
            if self.client:
                self.result.note(shown, action)
            wants.append(want)
            if want is not None and not self.opts.dry_run:
                self.wanted[self.count - 1] = want
                self.planned[0] += 1
                self.planned[1] += want.size
        if self.client:
            self.progress.total(*self.planned)  # grows as the lists arrive
        self.answers.put_nowait((SyncWant(actions=actions, wanted=[], sigs=[], offsets=[],
                                          prefixes=[], stream=self.ep.stream), wants))

    def _parts(self, name: str, kind: str) -> list[str]:
        if self.single:
            if self.count != 1 or kind != "file":
                raise UnsafePath("a sync of one file listed more than that file")
            assert self.single_name is not None
            return [self.single_name]
        parent, slash, leaf = name.rpartition("/")
        if (slash and not parent) or parent not in self.dir_names or name in self.listed:
            self._refuse_name(name)
        try:  # the parent's components were checked when it was listed
            sync_name(leaf)
        except UnsafePath as exc:
            raise UnsafePath(f"the source listed an unsafe name {name[:80]!r}; "
                             f"nothing written there") from exc
        parts = name.split("/")
        self.listed.add(name)
        if kind == "dir":
            self.dir_names.add(name)
        return parts

    def _refuse_name(self, name: str) -> None:
        """Why a listed name is refused: unsafe, listed twice, or not below a listed directory."""
        try:
            sync_name(name)
        except UnsafePath as exc:
            raise UnsafePath(f"the source listed an unsafe name {name[:80]!r}; "
                             f"nothing written there") from exc
        if name in self.listed:
            raise UnsafePath(f"the source listed {name[:80]!r} twice")
        raise UnsafePath(f"the source listed {name[:80]!r} beneath something that is not "
                         f"a directory it listed")

    def _replace(self, tree: DestTree, parts: list[str], old: os.stat_result | None,
                 kind: str) -> str:
        """Make room for an entry of ``kind``: the word for what happens."""
        if old is None:
            return {"dir": "mkdir", "symlink": "symlink", "file": "send"}[kind]
        if not self.opts.dry_run:
            tree.remove(parts)
        return "replace"

    def _plan_dir(self, tree: DestTree, parts: list[str], mode: int, mtime: int) -> str:
        old = tree.lookup(parts)
        self.dirs.append((parts, mode, mtime))
        if old is not None and stat.S_ISDIR(old.st_mode):
            return "attrs" if old.st_mode & 0o7777 != mode & 0o7777 else ""
        action = self._replace(tree, parts, old, "dir")
        if not self.opts.dry_run:
            tree.make_dir(parts, mode)
        return action

    def _plan_link(self, tree: DestTree, parts: list[str], target: str, mtime: int) -> str:
        if not link_stays_inside(len(parts) - 1, target) and (
                self.links_inside or self.opts.safe_links):
            if self.opts.safe_links:
                return "skip"
            raise UnsafePath(f"the symlink {'/'.join(parts)} -> {target[:80]!r} leaves the "
                             f"tree (--safe-links skips such links)")
        old = tree.lookup(parts)
        if old is not None and stat.S_ISLNK(old.st_mode):
            fd, name = tree.parent(parts)
            if os.readlink(name, dir_fd=fd) == target:
                return ""
        action = self._replace(tree, parts, old, "symlink")
        if not self.opts.dry_run:
            tree.make_link(parts, target)
            tree.set_attrs(parts, None, mtime)
        return action

    def _plan_file(self, tree: DestTree, parts: list[str], name: str, size: int, mode: int,
                   mtime: int, hash_: str) -> tuple[str, Wanted | None]:
        old = tree.lookup(parts)
        if old is not None and stat.S_ISREG(old.st_mode):
            if self.opts.checksum and hash_:
                same = old.st_size == size and self.hashes.hashed(
                    old, tree.open_basis, parts) == hash_
            else:
                same = old.st_size == size and old.st_mtime_ns == mtime
            if same:
                if old.st_mode & 0o7777 == mode & 0o7777 and old.st_mtime_ns == mtime:
                    return "", None
                if not self.opts.dry_run:
                    tree.set_attrs(parts, mode, mtime)
                return "attrs", None
            if old.st_size >= DELTA_MIN and size >= DELTA_MIN:
                return "delta", Wanted(parts, name, size, mode, mtime, old.st_size, 0)
            return "update", Wanted(parts, name, size, mode, mtime, 0, 0)
        action = self._replace(tree, parts, old, "file")
        offset = 0
        if size >= RESUME_MIN and not self.opts.dry_run and tree.partial_size(parts) >= RESUME_MIN:
            offset = -1  # measured when the want is sent (its prefix is hashed then)
        return action, Wanted(parts, name, size, mode, mtime, 0, offset)

    # --- answering ---------------------------------------------------------------------------

    async def _answer_all(self) -> None:
        """Send each list's sync_want, with the signatures its deltas need, in order."""
        while True:
            item = await self.answers.get()
            if item is None:
                return
            msg, wants = item
            first = self._answered
            self._answered += len(msg.actions)
            wanted, sigs, offsets, prefixes = [], [], [], []
            data = bytearray()
            for number, want in enumerate(wants):
                if want is None or self.opts.dry_run:
                    continue
                wanted.append(first + number)
                sig, offset, prefix = await self._describe(want)
                sigs.append(len(sig))
                offsets.append(offset)
                prefixes.append(prefix)
                data += sig
            self.ep.send(SyncWant(actions=msg.actions, wanted=wanted, sigs=sigs,
                                  offsets=offsets, prefixes=prefixes, stream=self.ep.stream))
            if data:
                await self.ep.send_data(data)
                self.result.bytes_signatures += len(data)
            await self.ep.drain()

    async def _describe(self, want: Wanted) -> tuple[bytes, int, str]:
        """(signature, kept offset, its hash) for one wanted file."""
        assert self.tree is not None
        if want.basis:
            try:
                fd = self.tree.open_basis(want.parts)
            except OSError:
                want.basis = 0
                return b"", 0, ""
            try:
                return await off_loop(self.offload, self._old_signature, fd, want), 0, ""
            except Exception:
                want.basis = 0  # the old copy changed meanwhile: ask for the file whole
                return b"", 0, ""
            finally:
                os.close(fd)
        if want.offset:
            dir_fd, name = self.tree.parent(want.parts)
            partial = PartialFile(os.dup(dir_fd), name, resume=True, owns_dir=True)
            try:
                want.offset = partial.offset
                return b"", partial.offset, partial.prefix_hash or ""
            finally:
                partial.close()
        return b"", 0, ""

    def _old_signature(self, fd: int, want: Wanted) -> bytes:
        """The old copy's signature: kept from the delta that built it, else read."""
        st = os.fstat(fd)
        kept = self.signatures.get(st) if st.st_size == want.basis else None
        sig = kept if kept is not None else signature(fd, want.basis, want.name)
        if self.signatures.directory is not None:
            want.basis_st, want.sig, want.sig_kept = st, sig, kept is not None
        return sig

    # --- the end -----------------------------------------------------------------------------

    def _finish(self) -> None:
        tree = self._open(False)
        if self.wanted and not self.opts.dry_run:
            raise RemoteProtocolError(f"the source did not send {len(self.wanted)} of the files "
                                      f"asked for")
        if self.opts.delete and not self.single:
            self._delete(tree)
        if not self.opts.dry_run:
            for parts, mode, mtime in reversed(self.dirs):
                tree.set_attrs(parts, mode, mtime)

    def _delete(self, tree: DestTree) -> None:
        """Remove what the source did not list, below the root only: the walk is the
        destination's own, never through a symlink; excluded entries and partials stay."""
        gone: list[tuple[str, ...]] = []
        going: set[tuple[str, ...]] = set()
        for parts, is_dir in tree.walk():
            if any(parts[:depth] in going for depth in range(1, len(parts))):
                continue  # below a directory that goes
            name = "/".join(parts)
            if (name in self.listed or parts[-1].endswith(PART_SUFFIX)
                    or self.filters.excluded(name, is_dir)):
                continue
            gone.append(parts)
            going.add(parts)
        for parts in gone:
            name = "/".join(parts)
            if not self.opts.dry_run:
                tree.remove(list(parts))
            self.deleted.append(name)
            self.result.deleted += 1
            if self.client:
                self.result.note(name, "delete")

    async def _report(self) -> None:
        for start in range(0, len(self.deleted), MAX_LIST):
            self.ep.send(SyncDeleted(names=self.deleted[start:start + MAX_LIST],
                                     stream=self.ep.stream))
            await self.ep.drain()
        self.ep.send(Done(path=self.tree.shown if self.tree else "", count=self.result.sent,
                          stream=self.ep.stream))
        await self.ep.drain()

