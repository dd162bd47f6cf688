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

from tether.storage.delta import CDC_MIN, SIG_RECORD, signed_bytes
from tether.storage.hashcache import evict, file_key, own_dir, read_whole, write_whole

MAX_FILES = 4096  # kept signatures in one directory...
MAX_BYTES = 64 * 1024 * 1024  # ...and their bytes in all (a 1 GiB file's: ~330 KB)

_MAGIC = b"tether-signature"
_VERSION = 1
_HEADER = struct.Struct("<16sI40s32s")  # magic, version, the file's key, digest of the body
_SUFFIX = ".sig"


class Signatures:
    """A side's kept signatures (``directory`` None: none kept, none found). Every method
    never raises: a cache never fails a sync."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    def _entry(self, st: os.stat_result) -> tuple[bytes, str] | None:
        """The file's key and its entry's path (None: no directory, or a key out of range)."""
        if self.directory is None:
            return None
        try:
            key = file_key(st)
        except struct.error:
            return None
        return key, os.path.join(self.directory, key.hex() + _SUFFIX)

    def get(self, st: os.stat_result) -> bytes | None:
        """The signature kept for the file ``st`` describes (its fstat), if it is unchanged."""
        entry = self._entry(st)
        if entry is None or not own_dir(os.path.dirname(entry[1]), create=False):
            return None
        key, path = entry
        # a file's last chunk may be short; every other one holds at least CDC_MIN bytes
        data = read_whole(path, _HEADER.size + (st.st_size // CDC_MIN + 1) * SIG_RECORD)
        if data is None or len(data) < _HEADER.size:
            return None
        import blake3

        magic, version, kept_key, check = _HEADER.unpack_from(data)
        body = data[_HEADER.size:]
        if (magic != _MAGIC or version != _VERSION or kept_key != key
                or blake3.blake3(body).digest() != check or len(body) % SIG_RECORD
                or signed_bytes(body) != st.st_size):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: not the first to go
        return body

    def put(self, st: os.stat_result, sig: bytes) -> None:
        """Keep ``sig`` for the file ``st`` describes (its fstat once it is in place)."""
        entry = self._entry(st)
        if entry is None or not sig:
            return
        import blake3

        key, path = entry
        with contextlib.suppress(OSError):
            write_whole(path, _HEADER.pack(_MAGIC, _VERSION, key, blake3.blake3(sig).digest()),
                        sig)
            evict(os.path.dirname(path), path, _SUFFIX, MAX_FILES, MAX_BYTES)

    def drop(self, st: os.stat_result) -> None:
        """Forget the signature of the file ``st`` described (replaced, or found stale)."""
        entry = self._entry(st)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.unlink(entry[1])


__all__ = ["MAX_BYTES", "MAX_FILES", "Signatures"]
