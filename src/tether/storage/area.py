"""The file area: the part of this server's file system one client may use, and the only code
that opens a client's paths on the server (``put``, ``get``, ``list``, batches, classic mode).

A client authorized with its own root is *confined*: its paths are relative to that root, may not
be absolute or contain ``..``, and are walked one component at a time with ``O_NOFOLLOW`` from a
directory file descriptor, so no symlink (even one swapped in between a check and an open) can
lead out. Whatever the client, nothing that resolves into the server's own ``TETHER_HOME`` or
audit log is reached (:class:`tether.storage.reserved.Reserved`). Only regular files are read
or replaced; devices and FIFOs are refused. An unconfined client's relative paths resolve against
the server's ``--root`` and absolute paths are allowed, as for any shell user of the same
account. Every failure is translated by
:func:`tether.storage.errors.disk_error`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tether.errors import AlreadyExists, NotFound, SourceChanged, UnsafePath
from tether.protocol.messages import MAX_BYTES
from tether.storage.batch import BatchReceiver, DirCache, Stored, Target
from tether.storage.errors import disk_error
from tether.storage.fsops import fs
from tether.storage.names import (
    DIR_FLAGS,
    check_name,
    check_text,
    descend,
    destination_exists,
    is_symlink,
    link_stays_inside,
    name_parts,
    shown_below,
)
from tether.storage.partial import PartialFile
from tether.storage.reserved import Reserved
from tether.storage.source import SourceFile, read_whole

if sys.platform == "win32":
    from tether.storage.winpaths import check_component

BATCH_DIRS_OPEN = 4  # directories a stored batch keeps open at once, besides its base
MAX_LIST_DEPTH = 64  # levels a listing descends (each holds two descriptors while it is read)
LIST_LEVEL_DESCRIPTORS = 2  # a level's directory, and the duplicate its scandir holds
Hold = Callable[[int], None]  # told of descriptors taken (+) and given back (-); may refuse
READ_FLAGS = fs.O_RDONLY | fs.O_NONBLOCK | fs.O_CLOEXEC  # O_NONBLOCK: a FIFO cannot hang us


@dataclass(frozen=True)
class EntryInfo:
    """One entry found while listing a tree (``parts`` relative to the listed root)."""

    parts: list[str]
    kind: str
    size: int
    mode: int
    mtime_ns: int
    target: str | None = None


@dataclass(frozen=True)
class BatchFiles:
    """What a sender says of the files of one batch, in the order of their names."""

    names: list[str]
    sizes: list[int]
    modes: list[int]
    mtimes: list[int]
    hashes: list[str]


class FileArea:
    """The part of the file system one client may use."""

    def __init__(self, root: Path, confined: bool, reserved: Reserved | None = None) -> None:
        self.root = root
        self.confined = confined
        self.reserved = reserved or Reserved()

    # --- resolution ----------------------------------------------------------------------------

    def _components(self, path: str) -> tuple[str, list[str]]:
        """The start directory and the components to walk from it."""
        if "\0" in path:
            raise UnsafePath("NUL byte in path")
        check_text(path)
        if sys.platform == "win32":
            for part in path.split("/"):
                if part:
                    check_component(part)
        if self.confined:
            if path.startswith("/"):
                raise UnsafePath(f"absolute paths are outside this client's root: {path}")
            parts = [p for p in path.split("/") if p not in ("", ".")]
            if ".." in parts:
                raise UnsafePath(f"'..' leaves this client's root: {path}")
            return str(self.root), parts
        start = "/" if path.startswith("/") else str(self.root)
        return start, [p for p in path.split("/") if p not in ("", ".")]

    def open_at(self, dir_fd: int, name: str, flags: int, shown: str) -> int:
        """``openat`` of one component: for a confined client never through a symlink, and a
        symlink met there is refused as one (Linux says ELOOP, or ENOTDIR with O_DIRECTORY)."""
        if self.confined:
            flags |= fs.O_NOFOLLOW
        self.reserved.check_name(dir_fd, name, shown, follow=not self.confined)
        try:
            fd = fs.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if self.confined and exc.errno in (errno.ELOOP, errno.ENOTDIR) and is_symlink(
                dir_fd, name
            ):
                raise UnsafePath(f"refusing to follow the symlink {name!r} in {shown}") from exc
            raise disk_error(exc, shown) from exc
        try:  # again on what was opened: a swap after the check leads nowhere either
            if flags & fs.O_DIRECTORY:
                self.reserved.check_step(fd, shown)
            else:
                self.reserved.check_file_fd(fd, shown)
        except BaseException:
            fs.close(fd)
            raise
        return fd

    def open_dir(self, parts: list[str], shown: str) -> int:
        """A directory fd for ``parts`` below the start, walked one component at a time."""
        start, _ = self._components("")
        return descend(self._open_from(start, [], shown), parts,
                       lambda fd, part: self.open_at(fd, part, DIR_FLAGS, shown))

    def resolve(self, path: str) -> tuple[int, str | None]:
        """(directory fd, final name) for ``path``; name is None when path is the start itself."""
        start, parts = self._components(path)
        if not self.confined and start == "/":
            return self._open_from("/", parts[:-1], path), (parts[-1] if parts else None)
        if not parts:
            return self.open_dir([], path), None
        return self.open_dir(parts[:-1], path), parts[-1]

    def _open_from(self, start: str, parts: list[str], shown: str) -> int:
        try:
            fd = fs.open(os.path.join(start, *parts), DIR_FLAGS)
        except OSError as exc:
            raise disk_error(exc, shown) from exc
        try:
            self.reserved.check_dir_fd(fd, shown)
        except BaseException:
            fs.close(fd)
            raise
        return fd

    def is_dir(self, dir_fd: int, name: str | None) -> bool:
        if name is None:
            return True
        try:
            st = fs.stat(name, dir_fd=dir_fd, follow_symlinks=not self.confined)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode)

    def open_tree(self, path: str) -> int:
        """A directory fd for the existing directory ``path`` (where a batch's names start)."""
        dir_fd, last = self.resolve(path)
        if last is None:
            return dir_fd
        try:
            return self.open_at(dir_fd, last, DIR_FLAGS, path)
        finally:
            fs.close(dir_fd)

    def _open_sub_dir(self, dir_fd: int, name: str, shown: str) -> int:
        """One directory below ``dir_fd`` (the :class:`DirCache` opener of this area)."""
        return self.open_at(dir_fd, name, DIR_FLAGS, shown)

    def _tree(self, path: str, names: list[str], max_open: int = 0) -> DirCache:
        """The directories a batch's names (each component checked here) lead through."""
        for name in names:
            name_parts(name)
        return DirCache(self.open_tree(path), self._open_sub_dir, max_open)

    # --- put -----------------------------------------------------------------------------------

    def put_target(self, path: str, name: str) -> tuple[int, str, str]:
        """Directory fd, entry name and shown path for a put of ``name`` to ``path``: into
        ``path`` under ``name`` if ``path`` is a directory (or ends in /), else ``path`` itself,
        as scp does."""
        dir_fd, last = self.resolve(path)
        try:
            into = path.endswith("/") or self.is_dir(dir_fd, last)
            if into and last is not None:
                sub = self.open_at(dir_fd, last, DIR_FLAGS, path)
                fs.close(dir_fd)
                dir_fd = sub
            if into:
                return dir_fd, check_name(name), posixpath.normpath(posixpath.join(path, name))
            assert last is not None
            # normalized, so that what is shown (and a symlink's depth, counted from it) is
            # where the entry really is: "x/." names x itself
            return dir_fd, check_name(last), posixpath.normpath(path)
        except BaseException:
            fs.close(dir_fd)
            raise

    def open_partial(self, dir_fd: int, name: str, *, exists_ok: bool, resume: bool,
                     owns_dir: bool = False) -> PartialFile:
        """The partial for file ``name`` in ``dir_fd``. An existing destination is refused
        unless ``exists_ok``; a directory always is."""
        self.reserved.check_name(dir_fd, name, name, follow=False)
        if not exists_ok and destination_exists(dir_fd, name):
            raise AlreadyExists(f"{name} exists (use --force to replace it or --rename)")
        if self.is_dir(dir_fd, name):
            raise AlreadyExists(f"{name} is a directory")
        return PartialFile(dir_fd, name, resume=resume, owns_dir=owns_dir)

    def open_put(self, path: str, name: str, *, exists_ok: bool, resume: bool
                 ) -> tuple[PartialFile, str]:
        """The partial a put of file ``name`` to ``path`` writes (it owns its directory fd), and
        the path shown for it."""
        dir_fd, name, shown = self.put_target(path, name)
        try:
            partial = self.open_partial(dir_fd, name, exists_ok=exists_ok, resume=resume,
                                        owns_dir=True)
        except BaseException:
            fs.close(dir_fd)
            raise
        return partial, shown

    def open_upload(self, name: str) -> PartialFile:
        """A fresh partial for a classic upload of ``name`` (one plain name) at the root."""
        dir_fd = self.open_dir([], name)
        try:
            return PartialFile(dir_fd, check_name(name), resume=False, owns_dir=True)
        except BaseException:
            fs.close(dir_fd)
            raise

    def make_dir(self, path: str, name: str, mode: int) -> tuple[str, bool]:
        """A put of directory ``name`` to ``path`` (an existing directory is fine): the shown
        path, and whether this call created it."""
        dir_fd, name, shown = self.put_target(path, name)
        try:
            fs.mkdir(name, mode & 0o1777, dir_fd=dir_fd)
        except FileExistsError:
            if not self.is_dir(dir_fd, name):
                raise AlreadyExists(f"{name} exists and is not a directory") from None
            return shown, False
        except OSError as exc:
            raise disk_error(exc, name) from exc
        finally:
            fs.close(dir_fd)
        return shown, True

    def make_symlink(self, path: str, name: str, target: str, force: bool) -> str:
        """A put of symlink ``name`` to ``path``; a confined client's link may not point outside
        its root. Returns the shown path."""
        dir_fd, name, shown = self.put_target(path, name)
        try:
            if self.confined:
                rel_dir = posixpath.normpath(posixpath.dirname(shown) or ".")
                depth = len([p for p in rel_dir.split("/") if p not in ("", ".")])
                if not link_stays_inside(depth, target):
                    raise UnsafePath(
                        f"symlink {name} -> {target} points outside this client's root")
            if "\0" in target:
                raise UnsafePath("NUL byte in symlink target")
            check_text(target)
            self.reserved.check_target(dir_fd, target, shown)
            self.reserved.check_name(dir_fd, name, shown, follow=False)
            if destination_exists(dir_fd, name):
                if not force:
                    raise AlreadyExists(f"{name} exists (use --force to replace it)")
                fs.unlink(name, dir_fd=dir_fd)
            fs.symlink(target, name, dir_fd=dir_fd)
        except OSError as exc:
            raise disk_error(exc, name) from exc
        finally:
            fs.close(dir_fd)
        return shown

    def store_batch(self, path: str, files: BatchFiles, *, force: bool, rename: bool,
                    on_stored: Stored) -> BatchReceiver:
        """A receiver storing a batch's files below the existing directory ``path``."""
        dirs = self._tree(path, files.names, max_open=BATCH_DIRS_OPEN)
        try:
            targets = []
            for name, size, mode, mtime, hash_ in zip(files.names, files.sizes, files.modes,
                                                     files.mtimes, files.hashes, strict=True):
                # every directory is reached now (a missing one is refused before any write),
                # but at most BATCH_DIRS_OPEN stay open: the file's is found again when its
                # bytes arrive
                dirs.place(name)
                targets.append(Target(-1, name.rpartition("/")[2], shown_below(path, name),
                                      size, mode & 0o1777, mtime, hash_, rel=name))
            return BatchReceiver(targets, force=force, rename=rename, on_stored=on_stored,
                                 dirs=dirs)
        except BaseException:
            dirs.close()
            raise

    # --- sync ----------------------------------------------------------------------------------

    def sync_dest(self, path: str, single: str | None, *, create: bool) -> tuple[int, str | None]:
        """The root a sync stores into: (directory fd, the name a ``single`` file takes there)
        by put's rule; else (the fd of ``path``, created if missing when ``create``; -1 when
        it is missing in a dry run, None)."""
        if single is not None:
            dir_fd, name, _ = self.put_target(path, single)
            return dir_fd, name
        dir_fd, last = self.resolve(path)
        if last is None:
            return dir_fd, None
        try:
            if create:
                try:
                    os.mkdir(last, 0o755, dir_fd=dir_fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise disk_error(exc, path) from exc
            try:
                return self.open_at(dir_fd, last, DIR_FLAGS, path), None
            except NotFound:
                if create:
                    raise
                return -1, None
        finally:
            os.close(dir_fd)

    def sync_source(self, path: str) -> tuple[int, str | None]:
        """What a pull lists at ``path``: (its directory fd, None), or for a regular file
        (the fd of the directory holding it, its name)."""
        dir_fd, last = self.resolve(path)
        if last is None:
            return dir_fd, None
        try:
            if self.is_dir(dir_fd, last):
                fd = self.open_at(dir_fd, last, DIR_FLAGS, path)
                os.close(dir_fd)
                return fd, None
            st = self._lstat(dir_fd, last, path)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{path} is not a regular file or a directory")
            return dir_fd, last
        except BaseException:
            os.close(dir_fd)
            raise

    # --- get -----------------------------------------------------------------------------------

    def open_source(self, path: str) -> SourceFile:
        """The regular file at ``path``, to send; devices, FIFOs and directories are refused."""
        dir_fd, name = self.resolve(path)
        try:
            if name is None:
                raise UnsafePath(f"{path} is a directory (use -r)")
            fd = self.open_at(dir_fd, name, READ_FLAGS, path)
        finally:
            fs.close(dir_fd)
        try:
            st = self._regular(fd, path, "a directory (use -r)")
            fs.set_blocking(fd, True)
        except BaseException:
            fs.close(fd)
            raise
        return SourceFile(fd, st, path)

    @staticmethod
    def _regular(fd: int, shown: str, as_dir: str) -> os.stat_result:
        st = fs.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = as_dir if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UnsafePath(f"{shown} is {kind}")
        return st

    def read_batch(self, path: str, names: list[str]) -> list[tuple[bytes, os.stat_result]]:
        """The whole content and status of each named regular file below ``path`` (a fetch),
        together at most a batch's bytes; anything else is refused like :meth:`open_source`."""
        dirs = self._tree(path, names, BATCH_DIRS_OPEN)  # not one descriptor per directory
        found: list[tuple[bytes, os.stat_result]] = []
        room = MAX_BYTES
        try:
            for name in names:
                dir_fd, last = dirs.place(name)
                data, st = self._read_small(dir_fd, last, shown_below(path, name), room)
                room -= len(data)
                found.append((data, st))
        finally:
            dirs.close()
        return found

    def _read_small(self, dir_fd: int, name: str, shown: str, room: int
                    ) -> tuple[bytes, os.stat_result]:
        fd = self.open_at(dir_fd, name, READ_FLAGS, shown)
        try:
            st = self._regular(fd, shown, "a directory")
            if st.st_size > room:
                raise SourceChanged(f"{shown} has grown to {st.st_size} bytes since it was "
                                    f"listed; get it again")
            try:
                return read_whole(fd, st.st_size, shown), st
            except OSError as exc:
                raise disk_error(exc, shown, "read") from exc
        finally:
            fs.close(fd)

    def walk(self, path: str, hold: Hold | None = None) -> Iterator[EntryInfo]:
        """Every entry below ``path`` (directories before their contents), symlinks not followed;
        ``hold`` is told before each level is opened (and may refuse it) and after it is closed."""
        dir_fd, name = self.resolve(path)
        try:
            if name is not None and not self.is_dir(dir_fd, name):
                self.reserved.check_name(dir_fd, name, path, follow=not self.confined)
                st = self._lstat(dir_fd, name, path)
                yield self._entry([], st, dir_fd, name)
                return
            top = self.open_dir([], path) if name is None else self.open_at(
                dir_fd, name, DIR_FLAGS, path)
        finally:
            fs.close(dir_fd)
        try:
            yield EntryInfo([], "dir", 0, fs.fstat(top).st_mode & 0o7777,
                            fs.fstat(top).st_mtime_ns)
            yield from self._below(top, hold or _no_hold)
        except OSError as exc:
            raise disk_error(exc, path, "list") from exc
        finally:
            fs.close(top)

    def _below(self, top: int, hold: Hold) -> Iterator[EntryInfo]:
        """The entries below the directory ``top``, read lazily (one ``scandir`` per level, in
        the order the file system gives): a listing's memory does not grow with a directory's
        size, and its descriptors only with depth (at most MAX_LIST_DEPTH levels)."""
        levels: list[tuple[list[str], int, Iterator[os.DirEntry[str]]]] = []
        try:
            levels.append(self._level([], top, None, hold))
            while levels:
                base, fd, entries = levels[-1]
                entry = next(entries, None)
                if entry is None:
                    self._close_level(levels.pop(), hold)
                    continue
                st = entry.stat(follow_symlinks=False)
                if self.reserved.hidden(st):  # the server's own: not listed, not entered
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
                        or stat.S_ISLNK(st.st_mode)):
                    continue
                parts = [*base, entry.name]
                yield self._entry(parts, st, fd, entry.name)
                if stat.S_ISDIR(st.st_mode):
                    if len(levels) >= MAX_LIST_DEPTH:
                        raise UnsafePath(f"{'/'.join(parts)}: a tree deeper than "
                                         f"{MAX_LIST_DEPTH} levels; list a subtree")
                    levels.append(self._level(parts, fd, entry.name, hold))
        finally:
            for level in levels:
                self._close_level(level, hold)

    @staticmethod
    def _level(parts: list[str], parent: int, name: str | None,
               hold: Hold) -> tuple[list[str], int, Iterator[os.DirEntry[str]]]:
        """One level of a listing: the directory ``name`` in ``parent`` (``parent`` itself when
        None) opened, and the reader of its entries; ``hold`` is told first."""
        hold(LIST_LEVEL_DESCRIPTORS)
        fd = -1
        try:
            fd = fs.dup(parent) if name is None else fs.open(
                name, DIR_FLAGS | fs.O_NOFOLLOW, dir_fd=parent)
            return parts, fd, fs.scandir(fd)
        except BaseException:
            if fd >= 0:
                fs.close(fd)
            hold(-LIST_LEVEL_DESCRIPTORS)
            raise

    @staticmethod
    def _close_level(level: tuple[list[str], int, Iterator[os.DirEntry[str]]],
                     hold: Hold) -> None:
        _, fd, entries = level
        try:
            close = getattr(entries, "close", None)
            if close is not None:
                close()
            fs.close(fd)
        finally:
            hold(-LIST_LEVEL_DESCRIPTORS)

    @staticmethod
    def _lstat(dir_fd: int, name: str, shown: str) -> os.stat_result:
        try:
            return fs.lstat(name, dir_fd=dir_fd)
        except OSError as exc:
            raise disk_error(exc, shown) from exc

    @staticmethod
    def _entry(parts: list[str], st: os.stat_result, dir_fd: int, name: str) -> EntryInfo:
        mode = st.st_mode & 0o7777
        if stat.S_ISLNK(st.st_mode):
            return EntryInfo(parts, "symlink", 0, mode, st.st_mtime_ns,
                             fs.readlink(name, dir_fd=dir_fd))
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        return EntryInfo(parts, kind, st.st_size if kind == "file" else 0, mode, st.st_mtime_ns)


def _no_hold(count: int) -> None:
    pass
