"""Partial files, placement and durability: the temporary file beside a destination that becomes
the destination only when it is complete and its hash verified. Both ends use it: the server for
puts and classic uploads, the client for gets. The final name only ever holds a complete,
verified, fsynced file.

The partial is ``.NAME.tether-part`` in the destination's directory, so that running the same
transfer again finds it and resumes; an exclusive ``flock`` keeps two transfers from writing one
destination. Everything works relative to a directory file descriptor opened safely by the caller
(:class:`tether.storage.area.FileArea` on the server, :mod:`tether.storage.names` walks on the
client), so a symlink swapped in for the name leads nowhere. Moves never replace a file unless
asked (``renameat2(RENAME_NOREPLACE)``, or ``link`` + ``unlink`` where the kernel lacks it; a
partial with a second link, left by a crash between those two, is never reused). A whole small
file is written to an unnamed ``O_TMPFILE`` and linked into place, so a crash leaves no partial of
it; a renamed or replaced name is made durable by fsyncing its
directory (many small files are made durable together: :mod:`tether.storage.durable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections.abc import Callable

from tether.errors import AlreadyExists, Busy, IntegrityError, UnsafePath
from tether.storage.errors import disk_error
from tether.storage.fsops import fs
from tether.storage.names import check_name, renamed
from tether.storage.source import CHUNK, digest, new_hasher

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

MAX_RENAMES = 10_000
RENAME_NOREPLACE = 1  # linux/fs.h
LOCK_OFFSET = 1 << 40  # Windows: the byte locked in a partial, past any data (Wine: < 2**62)


def _lock(fd: int) -> None:
    """Lock a partial against a second writer (BlockingIOError if one holds it). Windows: a
    byte-range lock far past any data (such locks are mandatory there, so never on data)."""
    if sys.platform == "win32":
        where = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(*exc.args) from exc
        finally:
            os.lseek(fd, where, os.SEEK_SET)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _load_renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (2.28 and later), or None (always on Windows: no libc to ask)."""
    if sys.platform == "win32":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2: list[Callable[..., int] | None] = []  # loaded at first use (not on every import)


def _renameat2() -> Callable[..., int] | None:
    if not _RENAMEAT2:
        _RENAMEAT2.append(_load_renameat2())
    return _RENAMEAT2[0]


def part_name(name: str) -> str:
    return f".{name}.tether-part"


def sync_dir(dir_fd: int) -> None:
    """Make the names in a directory durable (a failure to is not the transfer's failure: the
    file itself was fsynced)."""
    with contextlib.suppress(OSError):
        fs.fsync(dir_fd)


class PartialFile:
    """The growing temporary file for destination ``name`` in directory ``dir_fd`` (which it
    closes too when ``owns_dir``)."""

    def __init__(self, dir_fd: int, name: str, *, resume: bool, owns_dir: bool = False) -> None:
        self.dir_fd = dir_fd
        self.owns_dir = owns_dir
        self.name = check_name(name)
        self.part = part_name(name)
        self.fd, size = open_part(dir_fd, name)
        try:
            self.hasher = new_hasher()
            self.offset = 0
            if resume and size:
                self._hash_existing(size)
            else:
                os.ftruncate(self.fd, 0)
        except BaseException:
            fs.close(self.fd)
            raise
        self.written = self.offset

    def _hash_existing(self, size: int) -> None:
        pos = 0
        while pos < size:
            chunk = fs.pread(self.fd, min(CHUNK, size - pos), pos)
            if not chunk:
                break
            self.hasher.update(chunk)
            pos += len(chunk)
        self.offset = pos

    @property
    def prefix_hash(self) -> str | None:
        return digest(self.hasher.copy()) if self.offset else None

    def restart(self) -> None:
        """Drop the kept prefix: the source changed since the partial was written."""
        os.ftruncate(self.fd, 0)
        self.hasher = new_hasher()
        self.offset = self.written = 0

    def write(self, data: bytes | bytearray) -> None:
        try:
            view = memoryview(data)
            while view:
                n = fs.pwrite(self.fd, view, self.written)
                self.written += n
                view = view[n:]
        except OSError as exc:
            raise disk_error(exc, self.name, "write") from exc
        self.hasher.update(data)

    @property
    def hash(self) -> str:
        return digest(self.hasher)

    def commit(self, expected: str, mode: int | None, mtime_ns: int | None, *, force: bool,
               rename: bool, actual: str | None = None) -> str:
        """Verify, make durable and move into place; returns the name it was stored under.
        ``actual``: the hash of a file built other than by :meth:`write` (a delta's)."""
        if expected != (self.hash if actual is None else actual):
            self.discard()
            raise IntegrityError(
                f"{self.name}: data does not match the sender's hash; nothing was stored"
            )
        try:
            if mode is not None:
                fs.fchmod(self.fd, mode)
            if mtime_ns:
                fs.utime(self.fd, ns=(mtime_ns, mtime_ns))
            fs.fsync(self.fd)
        except OSError as exc:
            raise disk_error(exc, self.name, "write") from exc
        try:
            final = place(self.dir_fd, self.part, self.name, force, rename)
        except OSError as exc:
            raise disk_error(exc, self.name, "write") from exc
        fs.close(self.fd)
        self.fd = -1
        sync_dir(self.dir_fd)
        return final

    def discard(self) -> None:
        """Remove the partial (it is corrupt or unwanted)."""
        with contextlib.suppress(OSError):
            fs.unlink(self.part, dir_fd=self.dir_fd)
        self.close()

    def close(self) -> None:
        """Stop writing; the partial stays for a later resume."""
        if self.fd >= 0:
            fs.close(self.fd)
            self.fd = -1
        if self.owns_dir and self.dir_fd >= 0:
            fs.close(self.dir_fd)
            self.dir_fd = -1


def open_part(dir_fd: int, name: str) -> tuple[int, int]:
    """(fd, size) of the partial for ``name``, opened without following a symlink and locked
    against a second writer; created if missing, its content kept."""
    part = part_name(name)
    flags = fs.O_RDWR | fs.O_CREAT | fs.O_NOFOLLOW | fs.O_CLOEXEC
    for _ in range(2):
        try:
            fd = fs.open(part, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise disk_error(exc, part, "write") from exc
        st = fs.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink <= 1:
            break
        # a second name: a crash between link() and unlink() left the partial as the final
        # file too; writing into it would change that file in place. Drop the partial's name.
        fs.close(fd)
        with contextlib.suppress(FileNotFoundError):
            fs.unlink(part, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{part} is not a regular file")
        if st.st_nlink > 1:
            raise Busy(f"{part} keeps gaining a second link")
        try:
            _lock(fd)
        except BlockingIOError as exc:
            raise Busy(f"another transfer is writing {name}") from exc
    except BaseException:
        fs.close(fd)
        raise
    return fd, st.st_size


def place(dir_fd: int, part: str, name: str, force: bool, rename: bool) -> str:
    """Move the partial ``part`` to ``name`` (replacing it only with ``force``; with ``rename``
    to the first free ``NAME (n).EXT``); returns the name it took."""
    if force:
        try:
            fs.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except IsADirectoryError as exc:
            raise AlreadyExists(f"{name} is a directory") from exc
        return name
    candidates = [name]
    if rename:
        candidates += [renamed(name, n) for n in range(1, MAX_RENAMES)]
    for candidate in candidates:
        if _move_no_clobber(dir_fd, part, candidate):
            return candidate
    raise AlreadyExists(f"{name} exists (use --force to replace it or --rename)")


def _move_no_clobber(dir_fd: int, part: str, name: str) -> bool:
    """Move ``part`` to ``name`` unless ``name`` exists (False then), in one step with
    ``renameat2(RENAME_NOREPLACE)``: a crash can never leave the file under both names. Where
    the kernel or file system lacks it, ``link`` (which never replaces) then ``unlink``."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        result = renameat2(dir_fd, os.fsencode(part), dir_fd, os.fsencode(name),
                            RENAME_NOREPLACE)
        if result == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), name)
    try:
        fs.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    fs.unlink(part, dir_fd=dir_fd)
    return True


def open_unnamed(dir_fd: int) -> int | None:
    """An unnamed file in ``dir_fd`` (``O_TMPFILE``), or None where the file system has none."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        return fs.open(".", flag | fs.O_WRONLY | fs.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def link_unnamed(fd: int, dir_fd: int, name: str, force: bool, rename: bool) -> str:
    """Give the unnamed file ``fd`` its name: ``linkat`` never replaces, so without ``force``
    the first free candidate is taken atomically; with ``force`` a name that is taken is
    replaced by linking the file as the partial and renaming that over it (a crash leaves at
    most that whole, verified partial)."""
    source = f"/proc/self/fd/{fd}"
    candidates = [name] + ([renamed(name, n) for n in range(1, MAX_RENAMES)] if rename else [])
    for candidate in candidates:
        try:
            fs.link(source, candidate, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            if force:
                return _replace_with(source, dir_fd, name)
            continue
        return candidate
    raise AlreadyExists(f"{name} exists (use --force to replace it or --rename)")


def _replace_with(source: str, dir_fd: int, name: str) -> str:
    part = part_name(name)
    with contextlib.suppress(FileNotFoundError):
        fs.unlink(part, dir_fd=dir_fd)
    fs.link(source, part, dst_dir_fd=dir_fd, follow_symlinks=True)
    try:
        return place(dir_fd, part, name, True, False)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.unlink(part, dir_fd=dir_fd)
        raise


class Spool:
    """A small file of a batch whose bytes arrive in pieces: written to an unnamed file in its
    directory as they come (not held in memory), hashed on the way, and given its name only
    once whole and verified."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hasher = new_hasher()
        self.size = 0

    @classmethod
    def open(cls, dir_fd: int, name: str) -> Spool | None:
        """A spool in ``dir_fd``, or None where the file system has no unnamed files."""
        try:
            fd = open_unnamed(dir_fd)
        except OSError as exc:
            raise disk_error(exc, name, "store") from exc
        return None if fd is None else cls(fd)

    def write(self, data: bytes | bytearray | memoryview, name: str) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise disk_error(exc, name, "store") from exc
        self.hasher.update(data)
        self.size += len(data)

    @property
    def hash(self) -> str:
        return digest(self.hasher.copy())

    def close(self) -> None:
        """Forget the spool (an unnamed file vanishes with its last descriptor)."""
        if self.fd >= 0:
            fs.close(self.fd)
            self.fd = -1
