"""The dir-fd file calls the storage code makes (``open(name, flags, dir_fd=…)``, ``lstat``,
``mkdir``, ``rename``, ``fwalk``, …), for a Windows server, where ``os`` has no ``dir_fd``.

Storage code calls ``fs.open`` etc. with ``fs`` this module on Windows and ``os`` elsewhere
(``tether.storage.fsops``). A directory "fd" here is a real C runtime fd over a directory handle
opened with ``CreateFileW`` (``FILE_FLAG_BACKUP_SEMANTICS``), remembered with the final path of the
directory it holds. Because the handle is opened without ``FILE_SHARE_DELETE``, that directory
cannot be renamed, deleted or swapped for a junction while it is held, so a name joined to its
path names a child of the directory that was checked.

Every open is made with ``FILE_FLAG_OPEN_REPARSE_POINT`` (the link itself, never its target)
and refused with ``ELOOP`` when what it opened is a reparse point (symlink, junction, mount point)
and the caller asked for ``O_NOFOLLOW``; the handle's final path (``GetFinalPathNameByHandleW``,
which resolves every link on the way) must also lie under the path the walk started from, or it
is refused with ``ELOOP``. Creating or renaming onto a name that exists on disk in another case
(``README`` vs ``readme``: one file on NTFS) is refused with ``EEXIST``-like :class:`CaseClash`.
Directories are not fsynced (Windows cannot flush a directory handle; NTFS journals the rename).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat as stat_mod
import sys
from collections.abc import Iterator
from ctypes import wintypes

assert sys.platform == "win32"

import ctypes  # noqa: E402
import msvcrt  # noqa: E402

_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_k32.CreateFileW.restype = wintypes.HANDLE
_k32.CreateFileW.argtypes = (wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID,
                             wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE)
_k32.GetFinalPathNameByHandleW.argtypes = (wintypes.HANDLE, wintypes.LPWSTR, wintypes.DWORD,
                                           wintypes.DWORD)
_k32.GetFileAttributesW.argtypes = (wintypes.LPCWSTR,)
_k32.SetFileTime.argtypes = (wintypes.HANDLE, wintypes.LPVOID, wintypes.LPVOID, wintypes.LPVOID)
_k32.CloseHandle.argtypes = (wintypes.HANDLE,)
_k32.GetFileInformationByHandle.argtypes = (wintypes.HANDLE, wintypes.LPVOID)

INVALID_HANDLE = wintypes.HANDLE(-1).value
GENERIC_READ, GENERIC_WRITE = 0x80000000, 0x40000000
FILE_LIST_DIRECTORY = 0x0001
FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_SHARE_DELETE = 1, 2, 4
CREATE_NEW, CREATE_ALWAYS, OPEN_EXISTING, OPEN_ALWAYS, TRUNCATE_EXISTING = 1, 2, 3, 4, 5
FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
ERROR_SHARING_VIOLATION = 32

# POSIX flags os lacks on Windows: bits the C runtime does not use, read here and dropped.
O_RDONLY, O_WRONLY, O_RDWR = os.O_RDONLY, os.O_WRONLY, os.O_RDWR
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND
O_DIRECTORY = 0x1000000
O_NOFOLLOW = 0x2000000
O_CLOEXEC = 0x4000000
O_NONBLOCK = 0x8000000

_dirs: dict[int, str] = {}  # directory fd -> the final path of the directory it holds


class CaseClash(FileExistsError):
    """The name exists on disk in another case: one file on a case-insensitive file system."""


def _error(path: str) -> OSError:
    err = ctypes.get_last_error()
    exc = ctypes.WinError(err)
    exc.filename = path
    return exc


def final_path(handle: int) -> str:
    """The path a handle's object has, every link resolved, without the ``\\\\?\\`` prefix."""
    size = 1024
    while True:
        buf = ctypes.create_unicode_buffer(size)
        n = _k32.GetFinalPathNameByHandleW(handle, buf, size, 0)
        if n == 0:
            raise _error("<handle>")
        if n < size:
            path = buf.value
            return path[4:] if path.startswith("\\\\?\\") else path
        size = n + 1


def _within(path: str, top: str) -> bool:
    p, t = os.path.normcase(path).rstrip("\\"), os.path.normcase(top).rstrip("\\")
    return p == t or p.startswith(t + "\\")


def _join(dir_fd: int | None, name: str | os.PathLike[str]) -> str:
    name = os.fspath(name)
    if dir_fd is None:
        return name
    try:
        return os.path.join(_dirs[dir_fd], name)
    except KeyError:
        raise OSError(errno.EBADF, "not a directory fd", name) from None


def _attributes(handle: int) -> int:
    info = (ctypes.c_byte * 52)()  # BY_HANDLE_FILE_INFORMATION; attributes first
    if not _k32.GetFileInformationByHandle(handle, info):
        raise _error("<handle>")
    return int.from_bytes(bytes(info[:4]), "little")


def open(path: str | os.PathLike[str], flags: int, mode: int = 0o777, *,
         dir_fd: int | None = None) -> int:
    """``openat`` for Windows: see the module docstring for what is refused."""
    full = _join(dir_fd, path)
    access = {O_RDONLY: GENERIC_READ, O_WRONLY: GENERIC_WRITE,
              O_RDWR: GENERIC_READ | GENERIC_WRITE}[flags & 3]
    if flags & O_DIRECTORY:
        access = FILE_LIST_DIRECTORY
    if flags & O_CREAT and flags & O_EXCL:
        disposition = CREATE_NEW
    elif flags & O_CREAT:
        disposition = CREATE_ALWAYS if flags & O_TRUNC else OPEN_ALWAYS
    else:
        disposition = TRUNCATE_EXISTING if flags & O_TRUNC else OPEN_EXISTING
    if flags & O_CREAT:
        _refuse_case_clash(full)
    share = FILE_SHARE_READ | FILE_SHARE_WRITE | (0 if flags & O_DIRECTORY else FILE_SHARE_DELETE)
    handle = _k32.CreateFileW(full, access, share, None, disposition,
                              FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT, None)
    if handle in (None, INVALID_HANDLE):
        raise _error(full)
    try:
        return _checked_fd(handle, full, flags, dir_fd)
    except BaseException:
        _k32.CloseHandle(handle)
        raise


def _checked_fd(handle: int, full: str, flags: int, dir_fd: int | None) -> int:
    attrs = _attributes(handle)
    if attrs & FILE_ATTRIBUTE_REPARSE_POINT and flags & O_NOFOLLOW:
        raise OSError(errno.ELOOP, "a symbolic link or junction", full)
    is_dir = bool(attrs & FILE_ATTRIBUTE_DIRECTORY)
    if flags & O_DIRECTORY and not is_dir:
        raise OSError(errno.ENOTDIR, "not a directory", full)
    if is_dir and not flags & O_DIRECTORY:
        raise OSError(errno.EISDIR, "is a directory", full)
    where = final_path(handle)
    if dir_fd is not None and flags & O_NOFOLLOW and not _within(where, _dirs[dir_fd]):
        raise OSError(errno.ELOOP, "leads outside the directory it was opened from", full)
    fd = msvcrt.open_osfhandle(handle, (flags & (O_RDWR | O_WRONLY | O_APPEND)) | os.O_BINARY)
    if is_dir:
        _dirs[fd] = where
    else:
        _dirs.pop(fd, None)
    return fd


def dup(fd: int) -> int:
    new = os.dup(fd)
    if fd in _dirs:
        _dirs[new] = _dirs[fd]
    else:
        _dirs.pop(new, None)
    return new


def fd_path(fd: int) -> str:
    """The final path of what ``fd`` holds (/proc/self/fd/N's target on Linux)."""
    return _dirs.get(fd) or final_path(msvcrt.get_osfhandle(fd))


def scandir(fd: int) -> Iterator[os.DirEntry[str]]:
    """``os.scandir`` of the directory ``fd`` holds (Windows' scandir takes no descriptor)."""
    return os.scandir(_join(fd, "."))


def close(fd: int) -> None:
    _dirs.pop(fd, None)
    os.close(fd)


def _refuse_case_clash(full: str) -> None:
    """Refuse a new name when the directory holds it in another case. Only a name that already
    "exists" (a case-insensitive lookup) can clash, so the directory is read only then."""
    if not os.path.lexists(full):
        return
    parent, name = os.path.split(full)
    try:
        with os.scandir(parent) as entries:
            for entry in entries:
                if entry.name != name and entry.name.casefold() == name.casefold():
                    raise CaseClash(errno.EEXIST, f"{name!r} is the same file as "
                                    f"{entry.name!r} on a case-insensitive file system", full)
    except (FileNotFoundError, NotADirectoryError):
        return


def lstat(path: str, *, dir_fd: int | None = None) -> os.stat_result:
    return os.lstat(_join(dir_fd, path))


def stat(path: str, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
    return os.stat(_join(dir_fd, path), follow_symlinks=follow_symlinks)


def fstat(fd: int) -> os.stat_result:
    st = os.fstat(fd)
    if fd in _dirs and not stat_mod.S_ISDIR(st.st_mode):
        return os.stat(_dirs[fd])
    return st


def mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
    full = _join(dir_fd, path)
    if os.path.lexists(full):
        raise FileExistsError(errno.EEXIST, "exists", full)
    _refuse_case_clash(full)
    os.mkdir(full)


def unlink(path: str, *, dir_fd: int | None = None) -> None:
    os.unlink(_join(dir_fd, path))


def symlink(target: str, path: str, *, dir_fd: int | None = None) -> None:
    os.symlink(target, _join(dir_fd, path))


def readlink(path: str, *, dir_fd: int | None = None) -> str:
    return os.readlink(_join(dir_fd, path))


def rename(src: str, dst: str, *, src_dir_fd: int | None = None,
           dst_dir_fd: int | None = None) -> None:
    """POSIX rename: replaces ``dst`` atomically (``os.replace``, MoveFileEx)."""
    target = _join(dst_dir_fd, dst)
    _refuse_case_clash(target)
    os.replace(_join(src_dir_fd, src), target)


replace = rename


def link(src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None,
         follow_symlinks: bool = True) -> None:
    target = _join(dst_dir_fd, dst)
    _refuse_case_clash(target)
    os.link(_join(src_dir_fd, src), target)


def fsync(fd: int) -> None:
    """Files are flushed; a directory handle cannot be (and need not be: NTFS logs renames)."""
    if fd not in _dirs:
        os.fsync(fd)


def set_blocking(fd: int, blocking: bool) -> None:
    """Files on Windows are always blocking."""


def chmod(path: str, mode: int, *, dir_fd: int | None = None,
          follow_symlinks: bool = True) -> None:
    """Only a file's read-only bit follows a mode on Windows; directories keep theirs."""
    full = _join(dir_fd, path)
    if not os.path.isdir(full):
        os.chmod(full, mode)


def fchmod(fd: int, mode: int) -> None:
    """Unix modes do not exist on Windows (ACLs inherit from the directory): nothing to do."""


def utime(fd: int, *, ns: tuple[int, int]) -> None:
    """Set a file's modification (and access) time through its handle."""
    def filetime(value: int) -> ctypes.c_uint64:
        return ctypes.c_uint64(value // 100 + 116444736000000000)

    atime, mtime = filetime(ns[0]), filetime(ns[1])
    if not _k32.SetFileTime(msvcrt.get_osfhandle(fd), None, ctypes.byref(atime),
                            ctypes.byref(mtime)):
        raise _error("<fd>")


def fwalk(top: str = ".", *, dir_fd: int, follow_symlinks: bool = False
          ) -> Iterator[tuple[str, list[str], list[str], int]]:
    """``os.fwalk`` below a directory fd (relative paths joined with "/", as on Unix): links
    are listed, never entered."""
    start = _join(dir_fd, top)
    fd = open(start, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
    try:
        yield from _walk(top, fd)
    finally:
        close(fd)


def _walk(rel: str, fd: int) -> Iterator[tuple[str, list[str], list[str], int]]:
    dirs: list[str] = []
    files: list[str] = []
    with os.scandir(_dirs[fd]) as entries:
        for entry in entries:
            # a reparse point (link, junction, mount point) is listed as a file, to be refused
            # when opened; st_file_attributes rather than is_junction(), which is 3.12+
            attrs = entry.stat(follow_symlinks=False).st_file_attributes
            if entry.is_dir(follow_symlinks=False) and not attrs & FILE_ATTRIBUTE_REPARSE_POINT:
                dirs.append(entry.name)
            else:
                files.append(entry.name)
    yield rel, dirs, files, fd
    for name in dirs:
        try:
            sub = open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, dir_fd=fd)
        except OSError:
            continue
        try:
            yield from _walk(posixpath.join(rel, name), sub)
        finally:
            close(sub)


def is_reparse_point(path: str) -> bool:
    attrs = _k32.GetFileAttributesW(path)
    return attrs != 0xFFFFFFFF and bool(attrs & FILE_ATTRIBUTE_REPARSE_POINT)


def pread(fd: int, n: int, offset: int) -> bytes:
    """Read at an offset (Windows has no pread; each fd here belongs to one transfer)."""
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.write(fd, data)
