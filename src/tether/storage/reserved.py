"""The server's own files, which no client may reach through the file area: its ``TETHER_HOME``
(keys, ``authorized``) and its audit log. A client with ``put`` could otherwise grant itself
``exec`` by rewriting ``authorized``; one with ``get`` could copy ``server_key.pem`` and
impersonate the server.

Everything is compared by device and inode of what a path *resolves to*, never by string
prefix, so no spelling (``..``, a symlink, ``/proc/self/cwd``, a bind mount) leads in. A directory
is reserved when it is the home itself or lies below it; the audit log is reserved as a file.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from tether.errors import PermissionDenied
from tether.storage.fsops import fs

Key = tuple[int, int]


def _key(st: os.stat_result) -> Key:
    return st.st_dev, st.st_ino


def _fd_path(fd: int) -> str:
    """A path that leads to the directory ``fd`` holds: /proc's on Linux, the final path Windows
    gives its handle (storage/winfs.py)."""
    if sys.platform == "win32":
        return fs.fd_path(fd)
    return f"/proc/self/fd/{fd}"


class Reserved:
    """The directories and files of the server itself (checked by device and inode)."""

    def __init__(self, dirs: Iterable[Path] = (), files: Iterable[Path] = ()) -> None:
        self._dir_paths = list(dirs)
        self._file_paths = list(files)

    @property
    def empty(self) -> bool:
        return not self._dir_paths and not self._file_paths

    def dir_keys(self) -> set[Key]:
        """The reserved directories as they are now (a home made after start is found too)."""
        return {_key(st) for st in map(_stat, self._dir_paths) if st is not None}

    def file_keys(self) -> set[Key]:
        return {_key(st) for st in map(_stat, self._file_paths) if st is not None}

    def frozen(self) -> Reserved:
        """The same checks with the reserved paths' keys taken now, once: for one operation's
        trees, which look up every entry they touch (a sync's thousands), while the server's
        home and log stay where they are."""
        return _Frozen(self)

    def refuse(self, shown: str) -> PermissionDenied:
        return PermissionDenied(f"{shown}: the server's own files (its TETHER_HOME and audit "
                                f"log) are out of every client's reach")

    # --- checks ----------------------------------------------------------------------------

    def check_dir_fd(self, fd: int, shown: str) -> None:
        """Refuse a directory that is reserved or lies below a reserved one."""
        if self.empty:
            return
        if _key(fs.fstat(fd)) in self.dir_keys() or self._below_reserved(
                os.path.realpath(_fd_path(fd))):
            raise self.refuse(shown)

    def check_step(self, fd: int, shown: str) -> None:
        """A directory opened from an already checked parent without following a symlink: only
        itself can be reserved."""
        if self.empty:
            return
        if _key(fs.fstat(fd)) in self.dir_keys():
            raise self.refuse(shown)

    def check_file_fd(self, fd: int, shown: str) -> None:
        """Refuse an open file that is the audit log (or a reserved directory)."""
        if self.empty:
            return
        key = _key(fs.fstat(fd))
        if key in self.file_keys() or key in self.dir_keys():
            raise self.refuse(shown)

    def check_name(self, dir_fd: int, name: str, shown: str, *, follow: bool) -> None:
        """Refuse an entry of a checked directory that is reserved, or (``follow``: the client's
        symlinks are followed) a symlink leading to or below something reserved."""
        if self.empty:
            return
        try:
            st = fs.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return  # nothing there (yet): nothing reserved
        if _key(st) in self.file_keys() or _key(st) in self.dir_keys():
            raise self.refuse(shown)
        if follow and stat.S_ISLNK(st.st_mode):
            self.check_target(dir_fd, fs.readlink(name, dir_fd=dir_fd), shown)

    def check_target(self, dir_fd: int, target: str, shown: str) -> None:
        """Refuse a symlink target (made or followed) that resolves to or below something
        reserved."""
        if self.empty:
            return
        real = os.path.realpath(os.path.join(_fd_path(dir_fd), target))
        st = _stat(Path(real))
        if st is not None and _key(st) in self.file_keys():
            raise self.refuse(shown)
        if self._below_reserved(real):
            raise self.refuse(shown)

    def hidden(self, st: os.stat_result) -> bool:
        """Whether a listed entry (lstat) is reserved and is left out of a listing."""
        if self.empty:
            return False
        return _key(st) in self.file_keys() or _key(st) in self.dir_keys()

    def _below_reserved(self, real: str) -> bool:
        """Whether the resolved path ``real``, or a directory above it, is reserved."""
        reserved = self.dir_keys()
        path = real
        while True:
            st = _stat(Path(path))
            if st is not None and _key(st) in reserved:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent


class _Frozen(Reserved):
    """A :class:`Reserved` whose keys were taken once."""

    def __init__(self, live: Reserved) -> None:
        super().__init__(live._dir_paths, live._file_paths)
        self._dirs = live.dir_keys() if not live.empty else set()
        self._files = live.file_keys() if not live.empty else set()
        self._both = self._dirs | self._files

    def dir_keys(self) -> set[Key]:
        return self._dirs

    def file_keys(self) -> set[Key]:
        return self._files

    def hidden(self, st: os.stat_result) -> bool:
        return bool(self._both) and (st.st_dev, st.st_ino) in self._both


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
