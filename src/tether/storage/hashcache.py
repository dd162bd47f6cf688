"""A side's cache of whole-file BLAKE3 hashes, so that ``sync --checksum`` over an unchanged
tree costs a ``stat`` per file instead of a read (docs/SECURITY.md, "Hash cache").

**Key.** An entry is keyed by the file's ``(st_dev, st_ino, st_size, st_mtime_ns,
st_ctime_ns)``. Any write, truncation, ``chmod``, ``utime`` or rename sets the ctime to the
present, which no one can set back: a file whose content changed has another key even when its
size and mtime were restored (``touch -r``, ``os.utime``), and a file replaced by another has
another inode.

**The racy rule** (git's "racy clean" problem). File timestamps come from a coarse clock: a
change made in the same clock tick as the ctime an entry recorded leaves the key as it was. A
hash is therefore trusted only if the read it was computed from began at least :data:`TICK_NS`
after the file's ctime; a later change then gets a later ctime. 50 ms is ten of the kernel's
coarsest ticks (``HZ=100``: 10 ms; the multigrain timestamps of Linux 6.13+ are finer still),
with room for the kernel's and the process's clocks being read at different moments. On a file
system with whole-second timestamps (ext4 with small inodes, FAT, HFS+, some NFS servers: a ctime
on a whole second) the window is :data:`COARSE_TICK_NS`. A hash that is not trusted is used for
this run and not written: the next run hashes the file again. A file the destination writes
itself is racy by construction (its final ctime is that of its last rename, after its content
was known), so only reads are recorded. The clock read is this process's: on a network file
system whose server's clock is more than the window apart, turn the cache off
(``--no-hash-cache``).

**Files.** One cache file per tree root (named by the root directory's device and inode) in a
directory of the side's own: the client's ``TETHER_HOME/cache/hashes``, the server's under its
own ``TETHER_HOME``, which no client can reach. A directory that is not this process's user's own,
or that others may write, is not used (a privilege-separated worker, running as another account,
has no cache). The format: a header (magic, version, the root's device and inode, the count,
the BLAKE3 of the body) then the keys (40 bytes each) and the hashes (32 bytes each), loaded as
one ``dict`` (10,000 entries: ~2 ms; 1,000,000: ~0.4 s and ~180 MB; ``marshal`` of the same
dict loads as fast at 10,000 and 2.4x slower at 1,000,000, ``pickle`` faster but it runs what it
reads, and sqlite3 takes ~10 µs a lookup: 0.1 s for 10,000 files). Written to a
temporary file and renamed over the old one; not fsynced (a torn cache fails its digest and is
ignored). A file that is corrupt, foreign (another version or root) or too large is ignored:
a cache never fails a sync. Bounded: :data:`MAX_ENTRIES` per file, :data:`MAX_FILES` files and
:data:`MAX_BYTES` in all, the least recently used dropped first.

**Mirroring.** A run that looked every file of a whole tree up (a ``--checksum`` sync of a
directory without filters, that completed) saves only what it saw; other runs (a plain sync
keeps the hashes it computed while sending) add what they learned to what was there, keeping
at most twice the entries they listed, the oldest saved dropped first, so that the entries of
files changed since cannot pile up. Each side saves before its last message, so the next sync finds
what this one learned.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from tether.storage.source import CHUNK, HASH_NAME, digest, new_hasher

TICK_NS = 50_000_000  # a hash is trusted when its read began this long after the ctime...
COARSE_TICK_NS = 2_000_000_000  # ...or this long, where timestamps are whole seconds
MAX_ENTRIES = 1_000_000  # entries in one tree's cache (a sync lists at most as many)
MAX_FILES = 64  # trees' caches kept in one directory...
MAX_BYTES = 256 * 1024 * 1024  # ...and their bytes in all; the least recently used go first
STALE_TEMP_NS = 600 * 1_000_000_000  # a temporary file this old was left by a killed process

_MAGIC = b"tether-hashcache"
_VERSION = 1
_HEADER = struct.Struct("<16sIQQQ32s")  # magic, version, root dev, root ino, count, digest
_KEY = struct.Struct("<QQQqq")  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
_pack = _KEY.pack
_HASH = 32
_PREFIX = f"{HASH_NAME}:"
_SUFFIX = ".hc"

Root = tuple[int, int]  # the tree root's (st_dev, st_ino)


def cache_dir(home: str | os.PathLike[str]) -> str:
    """Where a side whose home is ``home`` keeps its hash caches."""
    return os.path.join(os.fspath(home), "cache", "hashes")


def file_key(st: os.stat_result) -> bytes:
    """A file's cache key: device, inode, size, mtime and ctime (struct.error if out of range)."""
    return _KEY.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def trusted(st: os.stat_result, started_ns: int) -> bool:
    """Whether a hash read from the file ``st`` describes, starting at ``started_ns`` (this
    process's wall clock), may be kept: the racy rule (see the module's docstring)."""
    window = TICK_NS if st.st_ctime_ns % 1_000_000_000 else COARSE_TICK_NS
    return started_ns - st.st_ctime_ns >= window


class TreeHashes:
    """One tree's cache for one run: lookups, hashes learned, and the save at the end. A
    disabled one (no ``path``) finds nothing and keeps nothing."""

    def __init__(self, path: str | None = None, root: Root = (0, 0), whole: bool = True) -> None:
        self.path = path
        self.root = root
        self.whole = whole  # the tree is listed whole (not a single file of its directory)
        self._old: dict[bytes, bytes] | None = None  # what the file held, loaded when needed
        self.seen: dict[bytes, bytes] = {}  # what this run looked up or learned (trusted)
        self.racy = 0  # hashes used but not kept (the racy rule)
        self.saved = False

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @property
    def unsaved(self) -> bool:
        """Whether :meth:`save` has something to do (the cache was used, and not saved yet)."""
        return not self.saved and (bool(self.seen) or self._old is not None)

    def lookup(self, st: os.stat_result) -> str | None:
        """The hash of the file ``st`` describes, if an earlier run read it and it is unchanged."""
        if self.path is None:
            return None
        old = self._old if self._old is not None else self._load()  # loaded: it was used
        try:
            key = _pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except struct.error:
            return None
        raw = old.get(key)
        if raw is None:
            return self._learned(key)
        self.seen[key] = raw
        return _PREFIX + raw.hex()

    def _learned(self, key: bytes) -> str | None:
        raw = self.seen.get(key)  # read earlier in this run (and trusted)
        return None if raw is None else _PREFIX + raw.hex()

    def note(self, st: os.stat_result, hash_: str, started_ns: int) -> None:
        """Keep ``hash_`` for the file ``st`` describes, read from ``started_ns`` on (only if
        the racy rule trusts it)."""
        if self.path is None:
            return
        if not trusted(st, started_ns):
            self.racy += 1
            return
        if len(self.seen) >= MAX_ENTRIES or not hash_.startswith(_PREFIX):
            return
        try:
            raw = bytes.fromhex(hash_[len(_PREFIX):])
            key = file_key(st)
        except (ValueError, struct.error):
            return
        if len(raw) == _HASH:
            self.seen[key] = raw

    def hashed(self, st: os.stat_result, open_file: Callable[[Any], int], where: Any) -> str:
        """The content hash of the file ``st`` (its lstat) describes: the cache's, else read
        from ``open_file(where)`` (a blocking read fd, closed here) and learned."""
        found = self.lookup(st)
        if found is not None:
            return found
        fd = open_file(where)
        try:
            return self.hash_fd(fd, st)
        finally:
            os.close(fd)

    def hash_fd(self, fd: int, st: os.stat_result) -> str:
        """Read and hash an open file; learned only if it was the file ``st`` describes from
        before the read to after it."""
        started = time.time_ns()
        before = os.fstat(fd) if self.path is not None else None
        hasher = new_hasher()
        want = min(st.st_size + 1, CHUNK)  # a small file in one read, without a 1 MiB buffer
        while chunk := os.read(fd, want):
            hasher.update(chunk)
            want = CHUNK
        hash_ = digest(hasher)
        if before is not None and file_key(before) == file_key(st) == file_key(os.fstat(fd)):
            self.note(st, hash_, started)
        return hash_

    # --- saving ----------------------------------------------------------------------------

    def save(self, complete: bool, limit: int = MAX_ENTRIES) -> None:
        """Write what this run knows (never raises). ``complete``: every file of the tree was
        looked up, so what was not seen is gone from the tree and is dropped. Otherwise what
        was there is kept too, at most ``limit`` entries in all: what this run saw, then the
        most recently saved (the entries of files that have changed since age out)."""
        if self.path is None or not self.unsaved:
            return
        self.saved = True
        with contextlib.suppress(OSError, ValueError, MemoryError):
            old = self._old if self._old is not None else self._load()
            if complete and self.whole:
                new = self.seen
            else:  # the file's order is the order saved in: the oldest first
                keep = max(min(limit, MAX_ENTRIES) - len(self.seen), 0)
                kept = [(k, v) for k, v in old.items() if k not in self.seen]
                new = dict(kept[len(kept) - keep:] if keep else ())
                new.update(self.seen)
            if new == old:
                os.utime(self.path)  # recently used: not the first to go
                return
            _write(self.path, self.root, new)
            evict(os.path.dirname(self.path), keep=self.path)

    def load(self) -> None:
        """Read the cache file now (e.g. in a thread, before the lookups begin)."""
        if self.path is not None and self._old is None:
            self._load()

    def _load(self) -> dict[bytes, bytes]:
        assert self.path is not None
        self._old = _read(self.path, self.root)
        return self._old


class HashCaches:
    """A side's cache directory for one sync (``None``: no cache): each tree root's cache, the
    same object for a root named twice."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        if sys.platform == "win32":
            directory = None  # Windows' st_ctime is the creation time: no change time to key on
        self.directory = None if directory is None else os.fspath(directory)
        self.trees: dict[Root, TreeHashes] = {}

    def tree(self, root_fd: int, whole: bool = True) -> TreeHashes:
        """The cache of the tree whose root directory is ``root_fd`` (``whole``: it is listed
        whole; False for the directory of a single file). Disabled if there is no usable
        cache directory; loaded only when first used."""
        if self.directory is None:
            return TreeHashes()
        try:
            st = os.fstat(root_fd)
        except OSError:
            return TreeHashes()
        root = st.st_dev, st.st_ino
        found = self.trees.get(root)
        if found is None:
            path = os.path.join(self.directory, f"{root[0]:x}-{root[1]:x}{_SUFFIX}")
            usable = own_dir(self.directory, create=False)
            found = self.trees[root] = TreeHashes(path if usable else None, root, whole)
        found.whole = found.whole and whole
        return found

    def load(self) -> None:
        """Read every tree's cache file now (in a thread, before the lookups begin)."""
        for tree in self.trees.values():
            tree.load()

    @property
    def unsaved(self) -> bool:
        return any(tree.unsaved for tree in self.trees.values())

    def save(self, complete: bool, limit: int = MAX_ENTRIES) -> None:
        """Save every tree's cache (never raises; see :meth:`TreeHashes.save`)."""
        save_trees(self.trees.values(), complete, limit)


NO_HASHES = TreeHashes()  # for a root that has no cache: finds nothing, keeps nothing


def save_trees(trees: Iterable[TreeHashes], complete: bool, limit: int = MAX_ENTRIES) -> None:
    """Save each cache once (never raises; see :meth:`TreeHashes.save`)."""
    for tree in trees:
        tree.save(complete, limit)


# --- the directory and its files ------------------------------------------------------------


def own_dir(directory: str, create: bool) -> bool:
    """Whether ``directory`` is a directory of this user's own that nobody else may write;
    missing, it is created (with its parent, mode 0700) if ``create``, else taken to be usable
    (it is made when there is something to save)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        if not create:
            return True
        parent = os.path.dirname(directory)
        try:
            for path in (parent, directory):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o700)
            st = os.lstat(directory)
        except OSError:
            return False
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _read(path: str, root: Root) -> dict[bytes, bytes]:
    """A cache file's entries; empty if it is missing, not ours, corrupt or foreign."""
    data = read_whole(path, _HEADER.size + MAX_ENTRIES * (_KEY.size + _HASH))
    return {} if data is None else _parse(data, root)


def read_whole(path: str, limit: int) -> bytes | None:
    """A cache file's bytes; None if it is missing, not a regular file of this user's own, or
    over ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > limit:
            return None
        parts = []
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse(data: bytes, root: Root) -> dict[bytes, bytes]:
    if len(data) < _HEADER.size:
        return {}
    magic, version, dev, ino, count, check = _HEADER.unpack_from(data)
    keys_end = _HEADER.size + count * _KEY.size
    if (magic != _MAGIC or version != _VERSION or (dev, ino) != root or count > MAX_ENTRIES
            or len(data) != keys_end + count * _HASH):
        return {}
    import blake3  # a sync that uses no cache never loads it

    body = memoryview(data)[_HEADER.size:]
    if blake3.blake3(body).digest() != check:
        return {}
    k, h, start = _KEY.size, _HASH, _HEADER.size
    return dict(zip([data[i:i + k] for i in range(start, keys_end, k)],
                    [data[i:i + h] for i in range(keys_end, len(data), h)], strict=True))


def _write(path: str, root: Root, entries: dict[bytes, bytes]) -> None:
    """Replace the cache file at once."""
    import blake3

    body = b"".join(entries) + b"".join(entries.values())
    header = _HEADER.pack(_MAGIC, _VERSION, root[0], root[1], len(entries),
                          blake3.blake3(body).digest())
    write_whole(path, header, body)


def write_whole(path: str, *parts: bytes) -> None:
    """Replace a cache file at once: a temporary file beside it, renamed over it (not fsynced:
    each file carries the digest that finds it torn)."""
    import tempfile

    directory = os.path.dirname(path)
    if not own_dir(directory, create=True):
        raise OSError(f"{directory} is not a directory of our own")
    fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                out.write(part)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def evict(directory: str, keep: str, suffix: str = _SUFFIX, max_files: int | None = None,
          max_bytes: int | None = None) -> None:
    """Drop the least recently used cache files (named ``*suffix``) beyond ``max_files`` and
    ``max_bytes`` (the hash caches' bounds if not given), and temporary files a killed process
    left."""
    max_files = MAX_FILES if max_files is None else max_files
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    now = time.time_ns()
    found = []
    with os.scandir(directory) as it:
        for entry in it:
            if not entry.name.endswith(suffix) or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            if entry.name.startswith(".tmp-"):
                if now - st.st_mtime_ns > STALE_TEMP_NS:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            found.append((st.st_mtime_ns, st.st_size, entry.path))
    found.sort(reverse=True)  # the most recent first
    kept = total = 0
    for _, size, path in found:
        if path == keep or (kept < max_files and total + size <= max_bytes):
            kept += 1
            total += size
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)


__all__ = ["NO_HASHES", "TICK_NS", "HashCaches", "TreeHashes", "cache_dir", "evict", "file_key",
           "own_dir", "read_whole", "save_trees", "trusted", "write_whole"]
