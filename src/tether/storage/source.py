"""Reading files to send: content hashes, whole small files, and a regular file streamed with its
size checked, so a source that grows or shrinks while it is sent is reported, never truncated
silently. Used by the server for ``get``, ``fetch`` and classic downloads, and by the client for
the small files of a ``put -r``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from tether.errors import SourceChanged
from tether.storage.errors import disk_error
from tether.storage.fsops import fs

HASH_NAME = "blake3"
CHUNK = 1024 * 1024


def new_hasher() -> Any:
    import blake3  # on first use: a sync with nothing to send never loads it

    return blake3.blake3()


def digest(hasher: Any) -> str:
    return f"{HASH_NAME}:{hasher.hexdigest()}"


def file_hash(data: bytes | bytearray | memoryview) -> str:
    import blake3

    return f"{HASH_NAME}:{blake3.blake3(data).hexdigest()}"


def read_whole(fd: int, size: int, shown: str) -> bytes:
    """The ``size`` bytes of an open small file; a file that is not that size now changed."""
    data = os.read(fd, size + 1)
    while len(data) < size:  # short reads only happen at the end of a regular file
        more = os.read(fd, size + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) != size:
        raise SourceChanged(f"{shown} changed size while it was being sent")
    return data


class SourceFile:
    """An open regular file being sent: its status when opened, a resume check against a
    receiver's kept prefix, and its bytes in chunks. Owns the fd (:meth:`close`)."""

    def __init__(self, fd: int, st: os.stat_result, shown: str) -> None:
        self.fd = fd
        self.shown = shown
        self.size = st.st_size
        self.mode = st.st_mode & 0o7777
        self.mtime_ns = st.st_mtime_ns

    def resume_point(self, offset: int, prefix_hash: str | None) -> tuple[int, Any]:
        """(where sending starts, a hasher fed with what precedes it): ``offset`` when the
        receiver's ``prefix_hash`` matches our first ``offset`` bytes, else 0."""
        hasher = new_hasher()
        if not (0 < offset <= self.size and prefix_hash):
            return 0, hasher
        for chunk in self.chunks(0, offset):
            hasher.update(chunk)
        if digest(hasher.copy()) == prefix_hash:
            return offset, hasher
        return 0, new_hasher()

    def chunks(self, start: int, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` (the size when opened); SourceChanged if the file
        ends before."""
        pos, end = start, self.size if end is None else end
        while pos < end:
            try:
                chunk = fs.pread(self.fd, min(CHUNK, end - pos), pos)
            except OSError as exc:
                raise disk_error(exc, self.shown, "read") from exc
            if not chunk:
                raise SourceChanged(f"{self.shown} shrank from {self.size} to {pos} bytes "
                                    f"while sent")
            yield chunk
            pos += len(chunk)

    def check_end(self) -> None:
        """SourceChanged if the file grew past the size it had when opened."""
        try:
            grew = fs.pread(self.fd, 1, self.size)
        except OSError as exc:
            raise disk_error(exc, self.shown, "read") from exc
        if grew:
            raise SourceChanged(f"{self.shown} grew past {self.size} bytes while it was being "
                                f"sent")

    def close(self) -> None:
        if self.fd >= 0:
            fs.close(self.fd)
            self.fd = -1
