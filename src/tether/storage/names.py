"""What a name from a peer may be, and walking directories without following symlinks.

Every name a peer supplies (a file to store, a batch entry, a listed path, a symlink's target)
is checked here before it reaches the file system; directories are entered one component at a
time from a directory file descriptor, so a symlink swapped in between a check and an open cannot
lead a write elsewhere. :data:`DIR_FLAGS` is the one set of flags a directory is opened with;
callers add ``O_NOFOLLOW`` where a symlink must not be entered.
"""

from __future__ import annotations

import posixpath
import stat
import sys
from collections.abc import Callable

from tether.errors import BadRequest, NotFound, UnsafePath
from tether.storage.fsops import fs

if sys.platform == "win32":
    from tether.storage.winpaths import check_component

DIR_FLAGS = fs.O_RDONLY | fs.O_DIRECTORY | fs.O_CLOEXEC
NO_FOLLOW_DIR = DIR_FLAGS | fs.O_NOFOLLOW


def check_name(name: str) -> str:
    """A single, harmless path component, or UnsafePath."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafePath(f"refusing the file name {name!r}")
    check_text(name)
    if sys.platform == "win32":
        check_component(name)
    return name


def check_text(path: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate sent as a JSON escape): the
    file system would reject it later, with an error of the wrong kind."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafePath(f"the path {path[:40]!r} is not valid Unicode") from exc
    return path


def name_parts(name: str) -> list[str]:
    """A relative name's components (a batch's, a listing's), each a plain name."""
    return [check_name(part) for part in name.split("/")]


def shown_below(base: str, name: str) -> str:
    """The path of ``name`` (checked components) below ``base``, normalized, as shown to users."""
    base = posixpath.normpath(base)
    return name if base == "." else f"{base}/{name}"


def link_stays_inside(depth: int, target: str) -> bool:
    """Whether a symlink to ``target``, placed ``depth`` directories below a tree's root,
    resolves inside that tree, whichever symlinks (obeying this same rule) it passes through.

    The target must be relative, and '..' may only lead it, at most ``depth`` times: the kernel
    resolves a '..' that follows a name from wherever that name leads, so a link through an
    in-tree link to a shallower place would climb out although ``normpath`` says it stays in.
    """
    if not target or target.startswith("/") or "\0" in target:
        return False
    ups, named = 0, False
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            named = True
        elif named:
            return False
        else:
            ups += 1
    return ups <= depth


def renamed(name: str, n: int) -> str:
    """``report (n).txt`` for ``report.txt``, as the tutorial's server renamed uploads."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:  # no dot, or a dotfile like ".bashrc"
        return f"{name} ({n})"
    return f"{stem} ({n}){dot}{suffix}"


def destination_exists(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in ``dir_fd`` (as anything, a dangling symlink included)."""
    try:
        fs.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:  # e.g. a name too long for this file system
        raise BadRequest(f"cannot use the name {name[:40]!r}: {exc.strerror}") from exc
    return True


def is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(fs.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def enter_dir(dir_fd: int, name: str, shown: str) -> int:
    """The directory ``name`` below ``dir_fd``, never through a symlink (a receiver's own tree:
    UnsafePath names what could not be entered)."""
    try:
        return fs.open(name, NO_FOLLOW_DIR, dir_fd=dir_fd)
    except OSError as exc:
        raise UnsafePath(f"cannot enter {shown}: {exc.strerror}") from exc


def descend(fd: int, parts: list[str], step: Callable[[int, str], int]) -> int:
    """Walk ``parts`` down from directory ``fd`` (which this takes over), ``step`` opening each
    next directory from its parent; every fd but the last is closed, on failure that too."""
    try:
        for part in parts:
            nxt = step(fd, part)
            fs.close(fd)
            fd = nxt
    except BaseException:
        fs.close(fd)
        raise
    return fd


def walk_dirs(root_fd: int, parts: list[str]) -> int:
    """A new directory fd for ``parts`` below ``root_fd``, never following a symlink."""
    shown = "/".join(parts)
    return descend(fs.dup(root_fd), parts, lambda fd, part: enter_dir(fd, part, shown))


def open_dir(path: str, shown: str | None = None) -> int:
    """A directory fd for a path a local user named (their own words: symlinks followed)."""
    try:
        return fs.open(path, DIR_FLAGS)
    except OSError as exc:
        raise NotFound(f"{shown or path}: {exc.strerror}") from exc
