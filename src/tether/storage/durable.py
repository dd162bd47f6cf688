"""Durable together: many small verified files made durable in one step, then given their names,
then each directory fsynced once (docs/PROTOCOL.md, "Sync" and "Batches").

An fsync per small file costs more on a real disk than rsync's whole transfer (rsync fsyncs
nothing). A group writes each file to an unnamed ``O_TMPFILE`` in its directory and asks the
kernel to start writing it out at once (``sync_file_range``); at the group's end one ``syncfs``
of the file system makes them all durable (what the issue suggests; on this machine's ext4 a
first sync of 10,000 files took 0.43x rsync's time this way against 1.05x with an fsync of each
file from 8 threads: bench/disk_tree.py, bench/durability.py). ``syncfs`` also writes out every
other process's dirty data on that file system: a one-off backlog is paid once, but where
another writer keeps the disk busy (:data:`SYNCFS_STRIKES` slow calls in a row) the groups on
that file system fsync only their own files instead, from several threads (a journaling file
system joins concurrent fsyncs into one commit, and most of the data is on its way already).
Then each file is linked into place and the new names made durable: by one more ``syncfs``,
or, when more groups follow, by the next group's own (its files' call writes out the names
before them too; :meth:`DurableGroup.wait` makes the last ones durable), else by an fsync of
each directory.
A final name therefore only ever holds a complete, verified, durable file, and a crash (or
kill -9) at any point leaves nothing of an unplaced file: an unnamed file vanishes with its last
descriptor. Where there is no ``O_TMPFILE`` (Windows, some file systems) the files are named
partials instead, placed by rename (a crash may leave those, for the next run to replace).

``background``: each group is made durable and placed on a thread while the caller fills the
next (at most one waits), and a failure there is raised by the caller's next call. The numbers
in :data:`GROUP_FILES` and friends bound the descriptors a group holds
(``tether.server.descriptors.COSTS``); the figures behind them are in bench/durability.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor

from tether.errors import AlreadyExists
from tether.storage.errors import disk_error
from tether.storage.fsops import fs
from tether.storage.names import check_name
from tether.storage.partial import (
    link_unnamed,
    open_part,
    open_unnamed,
    part_name,
    place,
    sync_dir,
)

GROUP_FILES = 32  # reference policy: a group is made durable at this many files (one fd each)...
GROUP_BYTES = 16 * 1024 * 1024  # ...or this many bytes...
GROUP_DIRS = 16  # ...or before it would hold a directory more than this (a dup'd fd each)
SYNC_THREADS = 8  # fsyncs at once, per process
SYNCFS_SLOW = 0.002  # reference policy: seconds per file of a group beyond which a syncfs...
SYNCFS_STRIKES = 3  # ...is slow, and after this many slow ones in a row the files are fsynced
SYNCFS_RETRY = 256  # groups fsynced file by file before syncfs is tried again
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback, do not wait

Placed = Callable[[str], None]  # told the name a file took, once it is durable in place


class _File:
    """One file of a group: its open (unnamed, or named partial) file and where it goes."""

    __slots__ = ("dir_fd", "fd", "force", "name", "named", "on_placed", "rename", "shown")

    def __init__(self, fd: int, named: bool, dir_fd: int, name: str, shown: str, force: bool,
                 rename: bool, on_placed: Placed | None) -> None:
        self.fd, self.named, self.dir_fd, self.name, self.shown = fd, named, dir_fd, name, shown
        self.force, self.rename, self.on_placed = force, rename, on_placed

    def discard(self) -> None:
        """Forget the file: an unnamed one vanishes with its descriptor, a partial is removed."""
        if self.named:
            with contextlib.suppress(OSError):
                fs.unlink(part_name(self.name), dir_fd=self.dir_fd)
        with contextlib.suppress(OSError):
            fs.close(self.fd)

    def place(self) -> str:
        """Give the (durable) file its final name; returns the name it took."""
        try:
            if self.named:
                return place(self.dir_fd, part_name(self.name), self.name, self.force,
                             self.rename)
            return link_unnamed(self.fd, self.dir_fd, self.name, self.force, self.rename)
        except AlreadyExists as exc:
            text = str(exc)
            if text.startswith(self.name):
                text = self.shown + text[len(self.name):]
            raise AlreadyExists(text) from exc
        except IsADirectoryError as exc:
            raise AlreadyExists(f"{self.shown} is a directory") from exc
        except OSError as exc:
            raise disk_error(exc, self.shown, "store") from exc


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` from libc (Python has no binding); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_LAZY_LOCK = threading.Lock()
_SYNC_FILE_RANGE: list[Callable[[int, int, int, int], int] | None] = []  # loaded at first use
_POOL: list[ThreadPoolExecutor] = []  # started at first use


def start_writeback(fd: int) -> None:
    """Have the kernel start writing ``fd``'s data out now, so that the group's fsync finds it
    mostly written (a hint: where it is missing or fails, the fsync does it all)."""
    if not _SYNC_FILE_RANGE:
        with _LAZY_LOCK:
            if not _SYNC_FILE_RANGE:
                _SYNC_FILE_RANGE.append(_load_sync_file_range())
    fn = _SYNC_FILE_RANGE[0]
    if fn is not None:
        fn(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        with _LAZY_LOCK:
            if not _POOL:
                _POOL.append(ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="tether-fsync"))
    return _POOL[0]


def _fsync_each(files: list[_File]) -> tuple[_File, OSError] | None:
    for file in files:
        try:
            fs.fsync(file.fd)
        except OSError as exc:
            return file, exc
    return None


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs`` from libc; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS: list[Callable[[int], int] | None] = []  # loaded at first use
_STRIKES: dict[int, int] = {}  # st_dev -> syncfs calls in a row that took too long


def syncfs_of(dev: int) -> Callable[[int], int] | None:
    """``syncfs`` for a group on file system ``dev``, unless it proved slow there: it writes out
    every other writer's dirty data too, so where another process keeps writing it would make
    us wait for them (:data:`SYNCFS_STRIKES` slow calls in a row; a one-off backlog, flushed
    by the first call, does not count against it)."""
    strikes = _STRIKES.get(dev, 0)
    if strikes >= SYNCFS_STRIKES:
        # given way: fsync each, and every so many groups give syncfs one more chance (a
        # long-lived server outlives the writer that slowed it)
        _STRIKES[dev] = strikes + 1 if strikes < SYNCFS_STRIKES + SYNCFS_RETRY else (
            SYNCFS_STRIKES - 1)
        return None
    return _syncfs()


def _syncfs() -> Callable[[int], int] | None:
    if not _SYNCFS:
        with _LAZY_LOCK:
            if not _SYNCFS:
                _SYNCFS.append(_load_syncfs())
    return _SYNCFS[0]


def _sync_by_file_system(files: list[_File]) -> tuple[list[_File], set[int]]:
    """One ``syncfs`` per file system the group's files are on, where it serves (measured
    here: 0.03 ms a file against 0.1 ms for an fsync of each, on ext4): the files it did not
    make durable (a failed syncfs leaves them to fsync, which names the file), and the file
    systems it served."""
    by_dev: dict[int, list[_File]] = {}
    for file in files:
        by_dev.setdefault(os.fstat(file.fd).st_dev, []).append(file)
    left: list[_File] = []
    served: set[int] = set()
    for dev, group in by_dev.items():
        fn = syncfs_of(dev)
        started = time.monotonic()
        if fn is None or fn(group[0].fd) != 0:
            left += group
            continue
        served.add(dev)
        slow = time.monotonic() - started > SYNCFS_SLOW * len(group)
        _STRIKES[dev] = _STRIKES.get(dev, 0) + 1 if slow else 0
    return left, served


def make_durable(files: list[_File]) -> set[int]:
    """Make every file durable: one ``syncfs`` of their file system where it serves, else an
    fsync of each, up to :data:`SYNC_THREADS` at once; raises the first failure (as the error
    of storing that file). Returns the file systems (``st_dev``) syncfs served."""
    files, served = _sync_by_file_system(files)
    if not files:
        return served
    n = min(SYNC_THREADS, len(files))
    if n <= 1:
        failures = [_fsync_each(files)]
    else:
        slices = [files[i::n] for i in range(n)]
        futures = [_pool().submit(_fsync_each, part) for part in slices[1:]]
        failures = [_fsync_each(slices[0])] + [f.result() for f in futures]
    for failure in failures:
        if failure is not None:
            file, exc = failure
            raise disk_error(exc, file.shown, "store") from exc
    return served


class Names:
    """Directories whose new entries are placed but not yet durable. A group that its bounds
    made settle leaves them to the next group's ``syncfs``, which writes them out with that
    group's files: one call where there were two."""

    __slots__ = ("dirs", "served")

    def __init__(self, dirs: list[int], served: set[int]) -> None:
        self.dirs, self.served = dirs, served

    def settle(self, synced: AbstractSet[int] = frozenset()) -> None:
        """Make the names durable (``synced``: file systems a ``syncfs`` since has written out
        already), then close the directories."""
        try:
            _sync_dirs(self.dirs, self.served, synced)
        finally:
            _close_all(self.dirs)
            self.dirs = []


def settle(files: list[_File], dirs: list[int], before: Names | None = None,
           final: bool = True) -> Names | None:
    """Make ``files`` durable, place each in order (telling its ``on_placed``), then make the
    new names durable and close ``dirs``. ``before``: an earlier group's names, made durable by
    the same ``syncfs`` as these files. Not ``final``: where a ``syncfs`` served, this group's
    names are returned for the next group's call to make durable. If a file cannot be made
    durable none is placed; if one cannot be placed, those before it are in place and the rest
    are discarded."""
    done = 0
    served: set[int] = set()
    try:
        served = make_durable(files)
        carried, before = before, None
        if carried is not None:
            carried.settle(served)
        for file in files:
            name = file.place()
            fs.close(file.fd)
            done += 1
            if file.on_placed is not None:
                file.on_placed(name)
    finally:
        for file in files[done:]:
            file.discard()
        if before is not None:  # these files failed: the earlier names are synced on their own
            before.settle()
        if not done:
            _close_all(dirs)
        elif final or not served:
            Names(dirs, served).settle()
    return Names(dirs, served) if done and not final and served else None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            fs.close(fd)


def _sync_dirs(dirs: list[int], served: set[int], synced: AbstractSet[int] = frozenset()
               ) -> None:
    """Make the new names durable: one more ``syncfs`` per file system where it served the
    files (a group's files spread over many directories: one call, not an fsync of each),
    else an fsync of each directory; none where ``synced`` says one since did it."""
    done = set(synced)
    for fd in dirs:
        dev = fs.fstat(fd).st_dev
        if dev in served and dev not in done:
            fn = syncfs_of(dev)
            if fn is not None and fn(fd) == 0:
                done.add(dev)
                continue
        if dev not in done:
            sync_dir(fd)


def _write(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _finish_file(file: _File, mode: int, mtime_ns: int) -> None:
    fs.fchmod(file.fd, mode & 0o7777)
    if mtime_ns:
        fs.utime(file.fd, ns=(mtime_ns, mtime_ns))
    if _fsynced_one_by_one(file.fd):
        start_writeback(file.fd)  # where syncfs serves, it writes them all out in one go


def _fsynced_one_by_one(fd: int) -> bool:
    """Whether a group's files on ``fd``'s file system are fsynced each (where the early
    writeback pays: a third of a writer's time on ext4 where syncfs does the job instead)."""
    return _syncfs() is None or _STRIKES.get(os.fstat(fd).st_dev, 0) >= SYNCFS_STRIKES


def write_file(dir_fd: int, name: str, data: bytes | bytearray | memoryview, mode: int,
               mtime_ns: int, *, shown: str = "", force: bool = True, rename: bool = False,
               on_placed: Placed | None = None) -> _File:
    """One verified file written unnamed (or as its partial, without ``O_TMPFILE``), for a
    group to keep; if it cannot be, nothing of it is kept. Uses no group's state: any thread."""
    check_name(name)
    shown = shown or name
    try:
        fd = open_unnamed(dir_fd)
        named = fd is None
        if fd is None:
            fd, size = open_part(dir_fd, name)
            if size:
                os.ftruncate(fd, 0)
        file = _File(fd, named, dir_fd, name, shown, force, rename, on_placed)
        try:
            _write(fd, data)
            _finish_file(file, mode, mtime_ns)
        except BaseException:
            file.discard()
            raise
    except OSError as exc:
        raise disk_error(exc, shown, "store") from exc
    return file


class DurableGroup:
    """Small verified files waiting to be made durable and placed together (see the module's
    docstring). Files are placed in the order they were added."""

    def __init__(self, *, files: int = GROUP_FILES, dirs: int = GROUP_DIRS,
                 background: bool = False) -> None:
        self.max_files = files
        self.max_dirs = dirs
        self.background = background
        self.pending: list[_File] = []
        self.size = 0
        self.dirs: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> this group's dup
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._names: Names | None = None  # the last group's, for the next syncfs

    def add(self, dir_fd: int, name: str, data: bytes | bytearray | memoryview, mode: int,
            mtime_ns: int, *, shown: str = "", force: bool = True, rename: bool = False,
            on_placed: Placed | None = None) -> None:
        """Write one verified file (not yet durable, nameless until the group is settled).
        ``force``: replace what is there; ``rename``: else take the first free ``NAME (n)``.
        If it cannot be written, nothing of it is kept, and the files before it are settled
        (they are whole) before the error is raised."""
        self._raise()
        try:
            file = write_file(dir_fd, name, data, mode, mtime_ns, shown=shown, force=force,
                              rename=rename, on_placed=on_placed)
        except BaseException:
            self.settle_quietly()
            raise
        self.keep(file, len(data))

    def settle_quietly(self) -> None:
        """Settle what is pending (whole and verified) while another error is on its way."""
        with contextlib.suppress(Exception):
            self.wait()

    def adopt(self, fd: int, dir_fd: int, name: str, size: int, mode: int, mtime_ns: int, *,
              shown: str = "", force: bool = True, rename: bool = False,
              on_placed: Placed | None = None) -> None:
        """Take an unnamed file the caller wrote (and verified) whole: the group owns ``fd``
        from now on, failure or not."""
        file = _File(fd, False, dir_fd, check_name(name), shown or name, force, rename,
                     on_placed)
        try:
            self._raise()
            _finish_file(file, mode, mtime_ns)
        except OSError as exc:
            file.discard()
            raise disk_error(exc, file.shown, "store") from exc
        except BaseException:
            file.discard()
            raise
        self.keep(file, size)

    def keep(self, file: _File, size: int) -> None:
        """Take a file written by :func:`write_file` (the group owns it from now on)."""
        try:
            st = fs.fstat(file.dir_fd)
            key = (st.st_dev, st.st_ino)
            if key not in self.dirs and len(self.dirs) >= self.max_dirs:
                self.flush(final=False)
            if key not in self.dirs:
                self.dirs[key] = fs.dup(file.dir_fd)
        except BaseException as exc:
            file.discard()
            if isinstance(exc, OSError):
                raise disk_error(exc, file.shown, "store") from exc
            raise
        file.dir_fd = self.dirs[key]
        self.pending.append(file)
        self.size += size
        if len(self.pending) >= self.max_files or self.size >= GROUP_BYTES:
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Make the pending files durable and place them: here, or (``background``) on this
        group's thread once the previous group's are, while the caller goes on. Not ``final``
        (a bound was reached, more files follow): their names may wait for the next group's
        ``syncfs``; :meth:`wait` makes every name durable."""
        self._join()
        files, dirs = self.pending, list(self.dirs.values())
        self.pending, self.dirs, self.size = [], {}, 0
        before, self._names = self._names, None
        if not files:
            _close_all(dirs)
            if before is not None:
                before.settle()
            return
        if not self.background:
            self._names = settle(files, dirs, before, final)
            return
        self._thread = threading.Thread(target=self._settle, args=(files, dirs, before, final),
                                        name="tether-durable")
        self._thread.start()

    def _settle(self, files: list[_File], dirs: list[int], before: Names | None,
                final: bool) -> None:
        try:
            self._names = settle(files, dirs, before, final)
        except BaseException as exc:
            self._error = exc

    def wait(self) -> None:
        """Flush, and wait until every file added is durable and in place (or raise why not)."""
        self.flush()
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Discard the pending files (nothing of them is kept), once a group being settled on
        the thread is (its files are whole and verified: they are placed, and their names
        made durable)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        names, self._names = self._names, None
        if names is not None:
            with contextlib.suppress(OSError):
                names.settle()
        for file in self.pending:
            file.discard()
        _close_all(list(self.dirs.values()))
        self.pending.clear()
        self.dirs.clear()
        self.size = 0

