"""Batches of small files, for both ends of a tree transfer (docs/PROTOCOL.md, "Batches").

A tree of small files moves like a tar stream: many files per message, their contents
concatenated in DATA frames, several batches in flight, and no round trip per file. Each file
still carries its own BLAKE3 hash, and the receiver (:class:`BatchReceiver`: the server for
``put -r``, the client for ``get -r``) stores a file only once its bytes are all there and
verified: written to an unnamed file, then made durable together with the files around it and
linked into place (:class:`tether.storage.durable.DurableGroup`: one fsync step per group
instead of one per file, each directory fsynced once per group), all before the batch is
reported done. A crash leaves no partial of a small file, and a name never holds less than the
whole, verified, durable file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from tether.errors import BadRequest, IntegrityError, TetherError
from tether.storage.durable import DurableGroup
from tether.storage.fsops import fs
from tether.storage.partial import Spool
from tether.storage.source import file_hash

SMALL_FILE = 256 * 1024  # reference policy: files up to this size travel in batches
SEND_FILES = 256  # reference policy: a sender closes a batch at this many files...
SEND_BYTES = 1024 * 1024  # ...or this many bytes of content...
SEND_HEADER = 40 * 1024  # ...or this much (pessimistically estimated) header
IN_FLIGHT = 4  # reference policy: batches open at once per transfer


def header_cost(name: str) -> int:
    """An upper bound of what one file adds to a batch's JSON header: its name as JSON (a
    printable character is escaped to at most two bytes per byte, anything else to ``\\uXXXX``),
    plus its size, mode, mtime and hash."""
    per_byte = 2 if name.isprintable() else 6
    return per_byte * len(name.encode("utf-8", "surrogateescape")) + 120


class Target:
    """Where one file of a batch goes: a directory fd (owned by a :class:`DirCache`) and a name
    in it, with what the sender said of the file. (A plain class: thousands are made per tree.)"""

    __slots__ = ("dir_fd", "hash", "mode", "mtime_ns", "name", "rel", "shown", "size")

    def __init__(self, dir_fd: int, name: str, shown: str, size: int, mode: int,
                 mtime_ns: int, hash_: str, rel: str = "") -> None:
        """``dir_fd`` -1: the directory is opened (from the receiver's :class:`DirCache`, by
        the batch name ``rel``) only when the file's bytes arrive."""
        self.rel = rel
        self.dir_fd = dir_fd
        self.name = name
        self.shown = shown
        self.size = size
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.hash = hash_


Stored = Callable[[Target, str], None]
Opener = Callable[[int, str, str], int]  # (parent fd, name, shown path) -> directory fd


class DirCache:
    """The directories a batch's names lead through, each opened (with ``opener``, which
    decides about symlinks) from its parent; :meth:`close` closes them all, the base too.
    With ``max_open``, at most that many besides the base stay open: the least recently used
    is closed, and opened again if needed (a group of files waiting to be placed holds its own
    duplicates of their directories)."""

    def __init__(self, base_fd: int, opener: Opener, max_open: int = 0) -> None:
        self.fds = {"": base_fd}
        self.opener = opener
        self.max_open = max_open

    def get(self, parts: list[str], shown: str) -> int:
        """The fd of the directory ``parts`` (already checked names) below the base."""
        key = "/".join(parts)
        fd = self.fds.get(key)
        if fd is None:
            parent = self.get(parts[:-1], shown)
            fd = self.opener(parent, parts[-1], shown)
            self.fds[key] = fd
            self._evict(keep={fd, parent})
        elif key and self.max_open:
            self.fds[key] = self.fds.pop(key)  # most recently used last
        return fd

    def _evict(self, keep: set[int]) -> None:
        while self.max_open and len(self.fds) - 1 > self.max_open:
            key = next((k for k, fd in self.fds.items() if k and fd not in keep), None)
            if key is None:
                return
            fd = self.fds.pop(key)
            with contextlib.suppress(OSError):
                fs.close(fd)

    def place(self, name: str) -> tuple[int, str]:
        """(directory fd, last component) for a batch name whose components are checked."""
        head, _, last = name.rpartition("/")
        fd = self.fds.get(head)
        if fd is None:
            fd = self.get(head.split("/"), name)
        return fd, last

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                fs.close(fd)
        self.fds.clear()


class BatchReceiver:
    """Splits a batch's DATA into its files and stores each once it is whole and verified (in a
    :class:`DurableGroup`: a file is in place once its group is settled, at the latest by
    :meth:`finish`, which also reports files that did not verify). It closes ``dirs`` (where
    its targets' directory fds come from, if it was given them) in :meth:`close`."""

    def __init__(self, targets: list[Target], *, force: bool, rename: bool, on_stored: Stored,
                 too_much: type[TetherError] = BadRequest, dirs: DirCache | None = None
                 ) -> None:
        self.targets = targets
        self.dirs = dirs
        self.too_much = too_much
        self.force = force
        self.rename = rename
        self.on_stored = on_stored
        self.expected = sum(t.size for t in targets)
        self.received = 0
        self.failed: list[str] = []
        self.group = DurableGroup(background=True)  # settled while the next files arrive
        self._index = 0
        self._buf = bytearray()
        self._spool: Spool | None = None  # the file whose bytes are arriving, on disk
        self._skip_empty()

    @property
    def complete(self) -> bool:
        return self._index >= len(self.targets)

    @property
    def pending(self) -> bool:
        """Files are whole and verified but not yet durable and in place (see :meth:`flush`)."""
        return bool(self.group.pending)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the batch; more than the sizes announced is refused. On a
        failure, the files that were whole before it are still stored."""
        if self.received + len(data) > self.expected:
            raise self.too_much(f"more data than the {self.expected} bytes this batch announced")
        self.received += len(data)
        try:
            self._feed(memoryview(data))
        except BaseException:
            self._store_arrived()
            raise

    def _feed(self, view: memoryview) -> None:
        while view:
            target = self.targets[self._index]
            have = self._spool.size if self._spool is not None else len(self._buf)
            need = target.size - have
            if not have and len(view) >= need:
                self._store(target, view[:need])  # the common case: no copy
            elif self._spool is not None or (not have and self._start_spool(target)):
                assert self._spool is not None
                self._spool.write(view[:need], target.shown)
                if self._spool.size < target.size:
                    return
                self._store_spool(target)
            else:  # no unnamed files here: gather in memory (at most one file's size)
                self._buf += view[:need]
                if len(self._buf) < target.size:
                    return
                self._store(target, self._buf)
                self._buf = bytearray()
            view = view[need:]
            self._index += 1
            self._skip_empty()

    def _skip_empty(self) -> None:
        while self._index < len(self.targets) and self.targets[self._index].size == 0:
            self._store(self.targets[self._index], b"")
            self._index += 1

    def _dir_of(self, target: Target) -> int:
        if target.dir_fd >= 0:
            return target.dir_fd
        assert self.dirs is not None
        return self.dirs.place(target.rel)[0]

    def _start_spool(self, target: Target) -> bool:
        self._spool = Spool.open(self._dir_of(target), target.shown)
        return self._spool is not None

    def _placed(self, target: Target) -> Callable[[str], None]:
        return lambda final: self.on_stored(target, final)

    def _store(self, target: Target, data: bytes | bytearray | memoryview) -> None:
        if file_hash(data) != target.hash:
            self.failed.append(target.shown)
            return
        self.group.add(self._dir_of(target), target.name, data, target.mode, target.mtime_ns,
                       shown=target.shown, force=self.force, rename=self.rename,
                       on_placed=self._placed(target))

    def _store_spool(self, target: Target) -> None:
        spool, self._spool = self._spool, None
        assert spool is not None
        if spool.hash != target.hash:
            self.failed.append(target.shown)
            spool.close()
            return
        fd, spool.fd = spool.fd, -1  # the group owns it from here
        self.group.adopt(fd, self._dir_of(target), target.name, spool.size, target.mode,
                         target.mtime_ns, shown=target.shown, force=self.force,
                         rename=self.rename, on_placed=self._placed(target))

    def flush(self) -> None:
        """Make the files that are whole durable and put them in place now (the sender
        paused: they should not wait for the rest, nor hold descriptors meanwhile)."""
        self.group.flush()

    def _store_arrived(self) -> None:
        with contextlib.suppress(TetherError, OSError):
            self.group.flush()

    def finish(self) -> None:
        """Make every stored file durable and put it in place; then, if any file did not
        verify, raise IntegrityError naming it (the others are stored)."""
        self.group.wait()
        if self.failed:
            more = len(self.failed) - 1
            also = f" ({more} more in this batch likewise)" if more else ""
            raise IntegrityError(f"{self.failed[0]}: data does not match the sender's hash; "
                                 f"nothing was stored under that name{also}")

    def close(self) -> None:
        """The batch ended (or its stream did): files that arrived whole and verified are
        stored (made durable and placed now, if they were not yet); an incomplete one was
        never written (its spool has no name)."""
        self._store_arrived()
        self.group.close()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self.dirs is not None:
            self.dirs.close()
