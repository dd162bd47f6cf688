"""What arrives at a sync's destination, one file at a time: a file asked for (:class:`Wanted`),
a large file arriving whole or as a delta into its partial and verified before it is moved into
place (:class:`Incoming`), and a batch of small files cut out of its DATA (:class:`BatchIn`).
"""

from __future__ import annotations

import os

from tether.errors import BadRequest, IntegrityError, RemoteProtocolError
from tether.protocol.sync_messages import SyncBatch, SyncCommit, SyncFile
from tether.storage.delta import Builder
from tether.storage.partial import PartialFile
from tether.storage.sigcache import Signatures
from tether.storage.tree import DestTree


class Wanted:
    """A file the destination asked for, until its content is stored."""

    __slots__ = ("basis", "basis_st", "mode", "mtime", "name", "offset", "parts", "sig",
                 "sig_kept", "size")

    def __init__(self, parts: list[str], name: str, size: int, mode: int, mtime: int,
                 basis: int, offset: int) -> None:
        self.parts, self.name, self.size, self.mode, self.mtime = parts, name, size, mode, mtime
        self.basis = basis  # the old copy's size when a delta is asked for, else 0
        self.offset = offset  # bytes of a kept partial offered for resuming
        self.basis_st: os.stat_result | None = None  # the old copy as its signature saw it
        self.sig = b""  # its signature, kept to derive the new file's (storage/sigcache.py)
        self.sig_kept = False  # the signature came from the cache, not from reading


class Incoming:
    """One file arriving (whole from an offset, or as a delta)."""

    def __init__(self, tree: DestTree, want: Wanted, msg: SyncFile) -> None:
        self.want = want
        self.msg = msg
        dir_fd, name = tree.parent(want.parts)
        self.basis_fd = -1
        self.builder: Builder | None = None
        self.partial = PartialFile(os.dup(dir_fd), name, resume=msg.offset > 0, owns_dir=True)
        try:
            if msg.delta:
                if not want.basis:
                    raise BadRequest(f"{want.name}: a delta nobody asked for")
                self.partial.restart()
                self.basis_fd = tree.open_basis(want.parts)
                self.builder = Builder(self.partial.fd, self.basis_fd, want.basis, msg.size,
                                       want.name)
            elif msg.offset != self.partial.offset:
                if msg.offset:
                    raise BadRequest(f"{want.name}: resumed at {msg.offset}, but "
                                     f"{self.partial.offset} bytes are kept")
                self.partial.restart()
        except BaseException:
            self.close(discard=True)
            raise

    def feed(self, data: bytes | bytearray) -> None:
        if self.builder is not None:
            self.builder.feed(data)
            return
        if self.partial.written + len(data) > self.msg.size:
            raise BadRequest(f"{self.want.name}: more than the announced {self.msg.size} bytes")
        self.partial.write(data)

    def commit(self, msg: SyncCommit, signatures: Signatures) -> int:
        """Verify, make durable, move into place; the bytes reused from the old copy. A file
        built from a delta leaves its signature in ``signatures`` for the next delta."""
        if self.builder is None:
            if self.partial.written != self.msg.size:
                raise BadRequest(f"{self.want.name}: {self.partial.written} of {self.msg.size} "
                                 f"bytes arrived")
            self.partial.commit(msg.hash, self.want.mode, self.want.mtime, force=True,
                                rename=False)
            return 0
        if not self.builder.complete:
            raise BadRequest(f"{self.want.name}: the delta made {self.builder.written} of "
                             f"{self.msg.size} bytes")
        actual = self.builder.digest()
        derived = None
        if actual == msg.hash and self.want.sig:
            derived = self.builder.signature(self.want.sig)
        built = os.dup(self.partial.fd)  # to learn the file's key once it is in place
        try:
            try:
                self.partial.commit(msg.hash, self.want.mode, self.want.mtime, force=True,
                                    rename=False, actual=actual)
            except IntegrityError:
                if self.want.sig_kept and self.want.basis_st is not None:
                    signatures.drop(self.want.basis_st)  # stale: the next run reads the file
                raise
            if self.want.basis_st is not None:
                signatures.drop(self.want.basis_st)  # the old copy is gone
            if derived is not None:
                signatures.put(os.fstat(built), derived)
        finally:
            os.close(built)
        return self.builder.matched

    def close(self, discard: bool = False) -> None:
        if self.basis_fd >= 0:
            os.close(self.basis_fd)
            self.basis_fd = -1
        if discard or (self.builder is not None and self.partial.fd >= 0):
            self.partial.discard()  # a half-built delta is not worth resuming
        self.partial.close()


class BatchIn:
    """A sync_batch's DATA, split into its files as each one completes (no copy of the rest:
    a batch is at most 4 MiB, and its files are cut out by offset)."""

    def __init__(self, msg: SyncBatch) -> None:
        self.items = list(zip(msg.indices, msg.sizes, msg.hashes, strict=True))
        self.expected = sum(msg.sizes)
        self.buf = bytearray()
        self.pos = 0  # where the next file starts in buf
        self.next = 0  # the next item

    @property
    def complete(self) -> bool:
        return self.next >= len(self.items)

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes | memoryview, str]]:
        """The files ``data`` completed: (index, content, hash). A batch that arrives in one
        DATA frame (the usual case: a sender's batches fit one) is cut without a copy."""
        if len(self.buf) + len(data) > self.expected:
            raise RemoteProtocolError("more data than a sync_batch announced")
        if not self.buf and len(data) == self.expected:
            view = memoryview(data)
            return [self._take(view) for _ in range(len(self.items) - self.next)]
        self.buf += data
        done: list[tuple[int, bytes | memoryview, str]] = []
        with memoryview(self.buf) as view:  # released before the buffer grows again
            while self.next < len(self.items) and len(self.buf) - self.pos >= (
                    self.items[self.next][1]):
                index, content, hash_ = self._take(view)
                done.append((index, bytes(content), hash_))
        return done

    def _take(self, view: memoryview) -> tuple[int, memoryview, str]:
        index, size, hash_ = self.items[self.next]
        self.next += 1
        self.pos += size
        return index, view[self.pos - size:self.pos], hash_


__all__ = ["BatchIn", "Incoming", "Wanted"]
