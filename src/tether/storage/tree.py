"""The two trees of a sync, below one root directory fd each (docs/PROTOCOL.md, "Sync").

:class:`SourceTree` walks what a source lists and opens its files; :class:`DestTree` is where
the destination looks entries up, makes directories and symlinks, removes what a type change or
``--delete`` removes, and finds the directory a file goes into. Below the root nothing is ever
entered through a symlink (every directory is opened with ``O_NOFOLLOW`` from its parent), so a
name a peer listed cannot lead a write, a removal or a read out of the tree, whatever was
swapped in meanwhile. The server reaches its roots through :class:`~tether.storage.area.FileArea`
(confinement), the client through the paths its user named.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from stat import S_ISDIR, S_ISLNK, S_ISREG

from tether.errors import UnsafePath
from tether.storage.errors import disk_error
from tether.storage.fsops import fs
from tether.storage.names import NO_FOLLOW_DIR, check_name, enter_dir
from tether.storage.partial import part_name
from tether.storage.reserved import Reserved

READ = fs.O_RDONLY | fs.O_NOFOLLOW | fs.O_CLOEXEC | fs.O_NONBLOCK
PART_SUFFIX = ".tether-part"
OPEN_DIRS = 8  # directory fds a tree keeps open (entries arrive directory by directory)


def sync_name(name: str) -> list[str]:
    """A listed name's components, each a plain name; partial files' names are refused too
    (they would collide with the partials the destination writes)."""
    parts = name.split("/")
    for part in parts:
        check_name(part)
    if parts[-1].endswith(PART_SUFFIX):
        raise UnsafePath(f"refusing the name {name!r}: it is a partial file's")
    return parts


def kind_of(st: os.stat_result) -> str | None:
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return None  # devices, FIFOs, sockets: never synced


class _Dirs:
    """Directory fds below a root, opened without following symlinks, a few kept open; a
    directory of the server's own (``reserved``: its home) is never entered."""

    def __init__(self, root_fd: int, shown: str, reserved: Reserved | None = None) -> None:
        self.root_fd = root_fd
        self.shown = shown
        self.reserved = (reserved or Reserved()).frozen()
        self._open: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._last: tuple[tuple[str, ...], int] = ((), root_fd)  # entries come dir by dir

    def get(self, parts: list[str] | tuple[str, ...]) -> int:
        """The fd of directory ``parts`` below the root (borrowed: valid until the next call)."""
        key = tuple(parts)
        if key == self._last[0]:
            return self._last[1]
        if not key:
            return self.root_fd
        fd = self._open.get(key)
        if fd is not None:
            self._open.move_to_end(key)
            self._last = key, fd
            return fd
        fd = enter_dir(self.get(key[:-1]), key[-1], "/".join(key))
        try:
            self.reserved.check_step(fd, "/".join(key))
        except BaseException:
            os.close(fd)
            raise
        self._open[key] = fd
        if len(self._open) > OPEN_DIRS:
            _, old = self._open.popitem(last=False)
            os.close(old)
        self._last = key, fd
        return fd

    def forget(self, prefix: tuple[str, ...]) -> None:
        """Close the fds of ``prefix`` and everything below it (it is being removed)."""
        self._last = (), self.root_fd
        for key in [k for k in self._open if k[:len(prefix)] == prefix]:
            os.close(self._open.pop(key))

    def close(self) -> None:
        for fd in self._open.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open.clear()
        self._last = (), -1
        with contextlib.suppress(OSError):
            os.close(self.root_fd)


class SourceTree:
    """A source's files below ``root_fd`` (which it owns); the server's own files (``reserved``)
    are neither listed nor read."""

    def __init__(self, root_fd: int, shown: str, reserved: Reserved | None = None) -> None:
        self.dirs = _Dirs(root_fd, shown, reserved)
        self.shown = shown

    def walk(self, keep: Callable[[tuple[str, ...], str], bool] | None = None
             ) -> Iterator[tuple[tuple[str, ...], os.stat_result, str]]:
        """(parts, lstat, symlink target) of every entry below the root that ``keep`` keeps
        (a directory it drops is not entered), sorted by name, each directory before its
        contents; devices, FIFOs, sockets and partials left out."""
        hidden = self.dirs.reserved.hidden
        todo: list[tuple[str, ...]] = [()]
        while todo:
            here = todo.pop()
            fd = self.dirs.get(here)
            try:
                names = sorted(os.listdir(fd))
            except OSError as exc:
                raise disk_error(exc, "/".join(here) or self.shown, "list") from exc
            below = []
            for name in names:
                if name.endswith(PART_SUFFIX):
                    continue
                try:
                    # asked again each time: between two entries the consumer may open
                    # other directories, and the fd cache may have closed this one
                    st = os.lstat(name, dir_fd=self.dirs.get(here))
                except FileNotFoundError:
                    continue  # vanished since listed
                mode = st.st_mode
                kind = "file" if S_ISREG(mode) else "dir" if S_ISDIR(mode) else (
                    "symlink" if S_ISLNK(mode) else None)
                parts = (*here, name)
                if kind is None or (keep is not None and not keep(parts, kind)) or hidden(st):
                    continue
                yield parts, st, os.readlink(name, dir_fd=self.dirs.get(here)) if (
                    kind == "symlink") else ""
                if kind == "dir":
                    below.append(parts)
            todo.extend(reversed(below))

    def open_file(self, parts: tuple[str, ...]) -> int:
        """A read fd of the regular file ``parts`` (never through a symlink)."""
        fd = self.dirs.get(parts[:-1])
        shown = "/".join(parts)
        try:
            out = fs.open(parts[-1], READ, dir_fd=fd)
        except OSError as exc:
            raise disk_error(exc, shown, "read") from exc
        try:
            self.dirs.reserved.check_file_fd(out, shown)
        except BaseException:
            os.close(out)
            raise
        os.set_blocking(out, True)
        return out

    def open_small(self, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
        """A read fd of the file ``parts`` (never through a symlink) and its fstat, taken once
        for both checks: the server's own files are refused, and a caller comparing the fstat
        with what it listed finds anything else swapped in (a FIFO, a device: their reads
        would not block, the fd being non-blocking, but they are never what was listed)."""
        shown = "/".join(parts)
        try:
            out = fs.open(parts[-1], READ, dir_fd=self.dirs.get(parts[:-1]))
        except OSError as exc:
            raise disk_error(exc, shown, "read") from exc
        try:
            st = os.fstat(out)
            if self.dirs.reserved.hidden(st):
                raise self.dirs.reserved.refuse(shown)
        except BaseException:
            os.close(out)
            raise
        return out, st

    def close(self) -> None:
        self.dirs.close()


class DestTree:
    """The destination's tree below ``root_fd`` (which it owns). Nothing of the server's own
    (``reserved``) is written, replaced, removed or linked to."""

    def __init__(self, root_fd: int, shown: str, reserved: Reserved | None = None) -> None:
        self.dirs = _Dirs(root_fd, shown, reserved)
        self.shown = shown

    def parent(self, parts: list[str]) -> tuple[int, str]:
        """(fd of the directory holding ``parts``, its last component), the entry checked not
        to be one of the server's own files."""
        fd = self.dirs.get(parts[:-1])
        self.dirs.reserved.check_name(fd, parts[-1], "/".join(parts), follow=False)
        return fd, parts[-1]

    def looked_up_parent(self, parts: list[str]) -> tuple[int, str]:
        """:meth:`parent` of an entry :meth:`lookup` already checked in this operation (it
        refuses the server's own files, which stay where they are): no second stat."""
        return self.dirs.get(parts[:-1]), parts[-1]

    def lookup(self, parts: list[str]) -> os.stat_result | None:
        """The entry's lstat, or None if it (or a directory above it) is missing or is not a
        directory one may enter."""
        try:
            st = os.lstat(parts[-1], dir_fd=self.dirs.get(parts[:-1]))
        except (OSError, UnsafePath):
            return None
        if self.dirs.reserved.hidden(st):  # as parent()'s check, with one lstat, not two
            raise self.dirs.reserved.refuse("/".join(parts))
        return st

    def make_dir(self, parts: list[str], mode: int) -> None:
        fd, name = self.parent(parts)
        try:
            os.mkdir(name, (mode & 0o7777) | 0o700, dir_fd=fd)
        except OSError as exc:
            raise disk_error(exc, "/".join(parts), "write") from exc

    def make_link(self, parts: list[str], target: str) -> None:
        fd, name = self.parent(parts)
        self.dirs.reserved.check_target(fd, target, "/".join(parts))
        try:
            os.symlink(target, name, dir_fd=fd)
        except OSError as exc:
            raise disk_error(exc, "/".join(parts), "write") from exc

    def set_attrs(self, parts: list[str], mode: int | None, mtime_ns: int | None) -> None:
        """Mode and mtime of an entry (never through a symlink)."""
        fd, name = self.parent(parts) if parts else (self.dirs.root_fd, ".")
        try:
            if mode is not None:
                os.chmod(name, mode & 0o7777, dir_fd=fd, follow_symlinks=False)
            if mtime_ns:
                os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
        except NotImplementedError:
            pass  # chmod of a symlink: Linux has no such thing
        except OSError as exc:
            raise disk_error(exc, "/".join(parts) or self.shown, "write") from exc

    def remove(self, parts: list[str]) -> None:
        """Remove the entry; a directory with everything below it (no symlink followed)."""
        fd, name = self.parent(parts)
        try:
            st = os.lstat(name, dir_fd=fd)
            if stat.S_ISDIR(st.st_mode):
                self.dirs.forget(tuple(parts))
                _remove_tree(fd, name)
            else:
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise disk_error(exc, "/".join(parts), "delete") from exc

    def open_basis(self, parts: list[str]) -> int:
        """A read fd of the old copy a delta builds from."""
        fd, name = self.parent(parts)
        try:
            out = fs.open(name, READ, dir_fd=fd)
        except OSError as exc:
            raise disk_error(exc, "/".join(parts), "read") from exc
        os.set_blocking(out, True)
        return out

    def partial_size(self, parts: list[str]) -> int:
        try:
            fd, name = self.parent(parts)
            st = os.lstat(part_name(name), dir_fd=fd)
        except (OSError, UnsafePath):
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def walk(self) -> Iterator[tuple[tuple[str, ...], bool]]:
        """(parts, is a directory) of every entry below the root, each directory before its
        contents; for ``--delete`` (the caller skips what it keeps, and what is below a
        directory it removes)."""
        todo: list[tuple[str, ...]] = [()]
        while todo:
            here = todo.pop()
            try:
                fd = self.dirs.get(here)
                names = sorted(os.listdir(fd))
            except (OSError, UnsafePath):
                continue  # removed meanwhile, or replaced by something else
            below = []
            for name in names:
                try:
                    st = os.lstat(name, dir_fd=self.dirs.get(here))
                except OSError:
                    continue
                if self.dirs.reserved.hidden(st):
                    continue  # the server's own: never listed, never removed
                is_dir = stat.S_ISDIR(st.st_mode)
                yield (*here, name), is_dir
                if is_dir:
                    below.append((*here, name))
            todo.extend(reversed(below))

    def close(self) -> None:
        self.dirs.close()


def _remove_tree(parent_fd: int, name: str) -> None:
    """``rm -r`` of directory ``name`` in ``parent_fd``, never following a symlink."""
    fd = fs.open(name, NO_FOLLOW_DIR, dir_fd=parent_fd)
    try:
        for entry in os.listdir(fd):
            st = os.lstat(entry, dir_fd=fd)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
