"""Durable together: many small verified files written to their partials, made durable in one
step, then moved into place, then each directory fsynced once (docs/PROTOCOL.md, "Sync").

An fsync per small file costs more on a real disk than rsync's whole transfer (rsync fsyncs
nothing). A group instead writes each file's partial, then makes them all durable with one
``syncfs`` of the file system (``fdatasync`` of each, where there is no ``syncfs``), and only
then renames them over their final names and fsyncs each directory touched once. A final name
therefore still only ever holds a complete, verified, durable file, and a crash at any point
leaves partials (which the next run replaces), never a torn file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable

from tether.storage.errors import disk_error
from tether.storage.names import check_name
from tether.storage.partial import open_part, part_name, place, sync_dir

GROUP_FILES = 1024  # reference policy: a group is made durable at this many files...
GROUP_BYTES = 64 * 1024 * 1024  # ...or this many bytes...
GROUP_DIRS = 16  # ...or this many directories (each held open until then)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) from libc; None elsewhere (Windows has no libc to load by None)."""
    if sys.platform == "win32":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


class DurableGroup:
    """Small files waiting to be made durable and moved into place together. Each pending file
    holds a dup of its directory fd (closed when the group is flushed)."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, str, int]] = []  # (dir fd, name, fd or -1)
        self.size = 0
        self.dirs: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> a dup'd dir fd
        self.placed: list[str] = []

    def add(self, dir_fd: int, name: str, data: bytes | bytearray | memoryview, mode: int,
            mtime_ns: int) -> None:
        """Write one verified file to its partial (not yet durable, not yet in place)."""
        check_name(name)
        fd, _ = open_part(dir_fd, name)
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode & 0o7777)
            if mtime_ns:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(part_name(name), dir_fd=dir_fd)
            raise disk_error(exc, name, "write") from exc
        keep = fd if _SYNCFS is None else -1
        if keep < 0:
            os.close(fd)  # the lock goes with it: the rename below is what counts
        self.pending.append((self._dir(dir_fd), name, keep))
        self.size += len(data)

    def _dir(self, dir_fd: int) -> int:
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        fd = self.dirs.get(key)
        if fd is None:
            fd = self.dirs[key] = os.dup(dir_fd)
        return fd

    @property
    def full(self) -> bool:
        return (len(self.pending) >= GROUP_FILES or self.size >= GROUP_BYTES
                or len(self.dirs) >= GROUP_DIRS)

    def flush(self, *, force: bool = True, rename: bool = False) -> list[str]:
        """Make every pending file durable, then move each into place (replacing what is
        there only with ``force``; with ``rename`` to the first free ``NAME (n).EXT``), then
        fsync each directory once. Returns the names the files took, in order. If one cannot
        be placed (``exists``), the files before it are in place and the partials of the rest
        are removed."""
        placed: list[str] = []
        self.placed = placed  # what went into place, also when a later file could not
        if not self.pending:
            return placed
        try:
            self._make_durable()
            for dir_fd, name, _ in self.pending:
                try:
                    placed.append(place(dir_fd, part_name(name), name, force, rename))
                except OSError as exc:
                    raise disk_error(exc, name, "write") from exc
            return placed
        except BaseException:
            for dir_fd, name, _ in self.pending[len(placed):]:
                with contextlib.suppress(OSError):
                    os.unlink(part_name(name), dir_fd=dir_fd)
            raise
        finally:
            for fd in self.dirs.values():
                sync_dir(fd)
            self.close()

    def _make_durable(self) -> None:
        if _SYNCFS is not None:
            devices = {dev: fd for (dev, _), fd in self.dirs.items()}
            for fd in devices.values():  # one syncfs per file system the group touched
                if _SYNCFS(fd) != 0:
                    err = ctypes.get_errno()
                    raise disk_error(OSError(err, os.strerror(err)), "syncfs", "write")
            return
        for _, name, fd in self.pending:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise disk_error(exc, name, "write") from exc

    def close(self) -> None:
        """Forget the pending files (their partials stay, for the next run to replace)."""
        for _, _, fd in self.pending:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for fd in self.dirs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pending.clear()
        self.dirs.clear()
        self.size = 0

