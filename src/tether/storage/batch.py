"""Batches of small files, for both ends of a tree transfer (docs/PROTOCOL.md, "Batches").

A tree of small files moves like a tar stream: many files per message, their contents
concatenated in DATA frames, several batches in flight, and no round trip per file. Each file
still carries its own BLAKE3 hash, and the receiver (:class:`BatchReceiver`: the server for
``put -r``, the client for ``get -r``) writes a file only once its bytes are all there and
verified, to its ``.NAME.tether-part``; when the batch ends (or its stream does) the files are
made durable together (:class:`~tether.storage.durable.DurableGroup`: one ``syncfs``, not an
fsync each), moved into place, and each directory touched is fsynced once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from tether.errors import AlreadyExists, BadRequest, IntegrityError, TetherError
from tether.storage.durable import DurableGroup
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

    __slots__ = ("dir_fd", "hash", "mode", "mtime_ns", "name", "shown", "size")

    def __init__(self, dir_fd: int, name: str, shown: str, size: int, mode: int,
                 mtime_ns: int, hash_: str) -> None:
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
    """The directories a batch's names lead through, each opened once (with ``opener``, which
    decides about symlinks) from its parent; :meth:`close` closes them all, the base too."""

    def __init__(self, base_fd: int, opener: Opener) -> None:
        self.fds = {"": base_fd}
        self.opener = opener

    def get(self, parts: list[str], shown: str) -> int:
        """The fd of the directory ``parts`` (already checked names) below the base."""
        key = "/".join(parts)
        fd = self.fds.get(key)
        if fd is None:
            fd = self.opener(self.get(parts[:-1], shown), parts[-1], shown)
            self.fds[key] = fd
        return fd

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
                os.close(fd)
        self.fds.clear()


class BatchReceiver:
    """Splits a batch's DATA into its files and stores each as soon as it is whole and
    verified; :meth:`finish` makes the batch durable and reports files that did not verify.
    It closes ``dirs`` (where its targets' directory fds come from, if it was given them) in
    :meth:`close`."""

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
        self._index = 0
        self._buf = bytearray()
        self.group = DurableGroup()
        self._written: list[Target] = []  # written to their partials, not yet in place
        self._skip_empty()

    @property
    def complete(self) -> bool:
        return self._index >= len(self.targets)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the batch; more than the sizes announced is refused."""
        if self.received + len(data) > self.expected:
            raise self.too_much(f"more data than the {self.expected} bytes this batch announced")
        self.received += len(data)
        view = memoryview(data)
        while view:
            target = self.targets[self._index]
            need = target.size - len(self._buf)
            if not self._buf and len(view) >= need:
                self._store(target, view[:need])  # the common case: no copy
            else:
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

    def _store(self, target: Target, data: bytes | bytearray | memoryview) -> None:
        if file_hash(data) != target.hash:
            self.failed.append(target.shown)
            return
        self.group.add(target.dir_fd, target.name, data, target.mode, target.mtime_ns)
        self._written.append(target)

    def _place(self) -> None:
        """Make what was written durable and move it into place; report each file stored."""
        written, self._written = self._written, []
        try:
            finals = self.group.flush(force=self.force, rename=self.rename)
        except AlreadyExists:
            done = len(self.group.placed)
            for target, final in zip(written, self.group.placed, strict=False):
                self.on_stored(target, final)
            raise AlreadyExists(f"{written[done].shown} exists (use --force to replace it or "
                                f"--rename)") from None
        for target, final in zip(written, finals, strict=True):
            self.on_stored(target, final)

    def finish(self) -> None:
        """Make the batch durable and move it into place (each directory fsynced once); then,
        if any file did not verify, raise IntegrityError naming it (the others are stored)."""
        self._place()
        if self.failed:
            more = len(self.failed) - 1
            also = f" ({more} more in this batch likewise)" if more else ""
            raise IntegrityError(f"{self.failed[0]}: data does not match the sender's hash; "
                                 f"nothing was stored under that name{also}")

    def close(self) -> None:
        """The batch ended (or its stream did): the files that arrived whole and verified are
        stored (made durable and moved into place); an incomplete one was never written."""
        try:
            if self._written:
                with contextlib.suppress(TetherError, OSError):
                    self._place()
        finally:
            self.group.close()
            if self.dirs is not None:
                self.dirs.close()
