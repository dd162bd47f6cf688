"""The signatures a destination kept of the large files it built from deltas, so that the next
delta of such a file skips reading, cutting and hashing the whole old copy (for a 1 GiB file,
the longest step of a re-sync; docs/SECURITY.md, "Hash cache").

**Where they come from.** A file built from a delta has a signature known without reading it:
each copied run is whole chunks of the old copy (their records are in the old copy's signature)
and each literal run is cut again alone (content-defined cuts depend only on the bytes since a
chunk's start, so this reproduces the sender's cuts). See :meth:`Builder.signature`.

**Why a built file may be kept, when the hash cache keeps only reads.** A stale hash would make
``--checksum`` skip a changed file: silent. A stale signature can only make a delta copy the
wrong bytes into a partial, which the whole-file check against the sender's BLAKE3 refuses
before anything is moved into place; the entry is then dropped, and the same sync run again
reads the old copy. Staleness itself needs a write that keeps the file's size, inode and mtime
and lands in the clock tick of our rename (the ctime in the key): a tool that restores mtimes
writing in place within milliseconds of the sync.

**Files.** One per kept signature, in the side's hash cache directory (same ownership rules:
storage/hashcache.py), named by the file's key (device, inode, size, mtime, ctime): a header
(magic, version, the key, the BLAKE3 of the body) and the signature. Not fsynced (a torn one fails
its digest). A replaced file's entry is removed with it; bounded by :data:`MAX_FILES` and
:data:`MAX_BYTES`, the least recently used dropped first.
"""

from __future__ import annotations

import contextlib
import os
import struct

from tether.storage.hashcache import evict, own_dir, read_whole, write_whole

MAX_FILES = 4096  # kept signatures in one directory...
MAX_BYTES = 64 * 1024 * 1024  # ...and their bytes in all (a 1 GiB file's: ~330 KB)

_MAGIC = b"tether-signature"
_VERSION = 1
_KEY = struct.Struct("<QQQqq")  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
_HEADER = struct.Struct(f"<16sI{_KEY.size}s32s")  # magic, version, key, digest of the body
_RECORD = struct.Struct(">I16s")  # a signature's record (storage/delta.py)
_SUFFIX = ".sig"
_CDC_MIN = 16 * 1024  # the smallest chunk but a file's last: bounds a signature's size


class Signatures:
    """A side's kept signatures (``directory`` None: none kept, none found). Every method
    never raises: a cache never fails a sync."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    def _path(self, st: os.stat_result) -> str | None:
        if self.directory is None:
            return None
        try:
            key = _KEY.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except struct.error:
            return None
        return os.path.join(self.directory, key.hex() + _SUFFIX)

    def get(self, st: os.stat_result) -> bytes | None:
        """The signature kept for the file ``st`` describes (its fstat), if it is unchanged."""
        path = self._path(st)
        if path is None or not own_dir(os.path.dirname(path), create=False):
            return None
        limit = _HEADER.size + (st.st_size // _CDC_MIN + 1) * _RECORD.size
        data = read_whole(path, limit)
        if data is None or len(data) < _HEADER.size:
            return None
        import blake3

        magic, version, key, check = _HEADER.unpack_from(data)
        body = data[_HEADER.size:]
        if (magic != _MAGIC or version != _VERSION or key.hex() + _SUFFIX
                != os.path.basename(path) or blake3.blake3(body).digest() != check
                or len(body) % _RECORD.size
                or sum(n for n, _ in _RECORD.iter_unpack(body)) != st.st_size):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: not the first to go
        return body

    def put(self, st: os.stat_result, sig: bytes) -> None:
        """Keep ``sig`` for the file ``st`` describes (its fstat once it is in place)."""
        path = self._path(st)
        if path is None or not sig:
            return
        import blake3

        key = bytes.fromhex(os.path.basename(path)[:-len(_SUFFIX)])
        with contextlib.suppress(OSError, ValueError):
            write_whole(path, _HEADER.pack(_MAGIC, _VERSION, key, blake3.blake3(sig).digest()),
                        sig)
            evict(os.path.dirname(path), path, _SUFFIX, MAX_FILES, MAX_BYTES)

    def drop(self, st: os.stat_result) -> None:
        """Forget the signature of the file ``st`` described (replaced, or found stale)."""
        path = self._path(st)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


NO_SIGNATURES = Signatures(None)

__all__ = ["MAX_BYTES", "MAX_FILES", "NO_SIGNATURES", "Signatures"]
