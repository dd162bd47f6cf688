"""The client's half of batches (docs/PROTOCOL.md, "Batches"): a ``put -r`` sends its small
files many to a ``batch`` stream; a ``get -r`` asks for them many to a ``fetch`` stream.

Names in a fetch are the client's own, taken from a listing already checked whole
(``tether.client.transfer``): the server only says how big each file is, its mode, mtime and
hash, and every local directory is entered with no-follow opens below the tree's root.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from tether.client.transfer_base import FileResult, Options, StreamOpener, _expect
from tether.errors import NotFound, RemoteProtocolError, SourceChanged
from tether.protocol import Batch, Data, Done, Entry, Fetch, Files
from tether.storage.batch import (
    SEND_BYTES,
    SEND_FILES,
    SEND_HEADER,
    BatchReceiver,
    DirCache,
    Target,
    header_cost,
)
from tether.storage.fsops import fs
from tether.storage.names import enter_dir
from tether.storage.source import file_hash, read_whole

if TYPE_CHECKING:
    from tether.client.process import StreamHandle

Connection = StreamOpener  # what a batch needs of a connection


T = TypeVar("T")
Source = tuple[str, os.stat_result]  # a local file to put: its path and lstat


@dataclass
class Batcher(Generic[T]):
    """Collects the small files of a tree in walk order into batches of bounded size."""

    names: list[str] = field(default_factory=list)
    items: list[T] = field(default_factory=list)
    size: int = 0
    header: int = 0

    def full_before(self, name: str, size: int) -> bool:
        """Whether a file of ``size`` named ``name`` no longer fits in the batch so far."""
        return bool(self.names) and (
            len(self.names) >= SEND_FILES or self.size + size > SEND_BYTES
            or self.header + header_cost(name) > SEND_HEADER)

    def add(self, name: str, size: int, item: T) -> None:
        self.names.append(name)
        self.items.append(item)
        self.size += size
        self.header += header_cost(name)

    def take(self) -> tuple[list[str], list[T]]:
        taken = self.names, self.items
        self.names, self.items, self.size, self.header = [], [], 0, 0
        return taken


def _label(names: list[str]) -> str:
    """What a progress display calls a batch (unique: each file is in one batch)."""
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} files)"


# --- put -r -------------------------------------------------------------------------------------


@dataclass
class OpenBatch:
    handle: StreamHandle
    contents: list[bytes]
    hashes: list[str]
    label: str


def open_batch(conn: Connection, base: str, names: list[str], sources: list[Source],
               opts: Options) -> OpenBatch:
    """Read and hash the files, and open their batch stream (at once, in walk order, so the
    directories they go into were asked for before)."""
    contents, modes, mtimes = [], [], []
    for path, st in sources:
        contents.append(_read_local(path, st.st_size))
        modes.append(st.st_mode & 0o7777)
        mtimes.append(st.st_mtime_ns)
    hashes = [file_hash(data) for data in contents]
    handle = conn.open_stream(Batch, path=base, names=names,
                              sizes=[len(data) for data in contents], modes=modes,
                              mtimes=mtimes, hashes=hashes, force=opts.force,
                              rename=opts.rename)
    return OpenBatch(handle, contents, hashes, _label(names))


def _read_local(path: str, size: int) -> bytes:
    try:
        fd = fs.open(path, fs.O_RDONLY | fs.O_CLOEXEC | fs.O_NOFOLLOW)
    except OSError as exc:
        raise NotFound(f"{path}: {exc.strerror}") from exc
    try:
        return read_whole(fd, size, path)
    finally:
        fs.close(fd)


async def send_batch(batch: OpenBatch, opts: Options) -> list[FileResult]:
    """Send the contents and wait for the server's word that every file is stored."""
    handle, total = batch.handle, sum(len(data) for data in batch.contents)
    opts.progress.file_started(batch.label, total, 0)
    try:
        if total:
            await handle.send_data(b"".join(batch.contents))
        done = await _expect(handle, Done)
    except BaseException:
        handle.abandon()
        raise
    assert isinstance(done, Done)
    if len(done.names) != len(batch.contents):
        raise RemoteProtocolError(f"the server stored {len(done.names)} files of a batch of "
                                  f"{len(batch.contents)}")
    opts.progress.advanced(batch.label, total)
    opts.progress.file_done(batch.label)
    return [FileResult(path, "file", len(data), hash_)
            for path, data, hash_ in zip(done.names, batch.contents, batch.hashes, strict=True)]


# --- get -r -------------------------------------------------------------------------------------


async def fetch_batch(conn: Connection, remote: str, root_fd: int, top: Path,
                      entries: list[Entry], opts: Options) -> list[FileResult]:
    """Fetch the files of ``entries`` (small, all checked) in one stream and store each."""
    dirs = DirCache(fs.dup(root_fd), enter_dir)
    try:
        names = ["/".join(e.parts) for e in entries]
        places = [(*dirs.place(name), f"{top}/{name}") for name in names]
        handle = conn.open_stream(Fetch, path=remote, names=names)
        try:
            return await _receive(handle, places, _label(names), opts)
        except BaseException:
            handle.abandon()
            raise
    finally:
        dirs.close()


async def _receive(handle: StreamHandle, places: list[tuple[int, str, str]], label: str,
                   opts: Options) -> list[FileResult]:
    files = await _expect(handle, Files)
    assert isinstance(files, Files)
    total = sum(files.sizes)  # its lists and caps were checked as it arrived
    targets = [Target(dir_fd, name, shown, size, mode & 0o777, mtime, hash_)
               for (dir_fd, name, shown), size, mode, mtime, hash_ in zip(
                   places, files.sizes, files.modes, files.mtimes, files.hashes, strict=True)]
    results: list[FileResult] = []

    def stored(target: Target, final: str) -> None:
        shown = target.shown if final == target.name else posixpath.join(
            posixpath.dirname(target.shown), final)
        results.append(FileResult(shown, "file", target.size, target.hash))

    receiver = BatchReceiver(targets, force=opts.force, rename=opts.rename, on_stored=stored,
                             too_much=SourceChanged)
    opts.progress.file_started(label, total, 0)
    try:
        while True:
            event = await handle.next()
            if isinstance(event, Done):
                break
            assert isinstance(event, Data)  # the fetch table allows nothing else after files
            receiver.feed(event.data)
            opts.progress.advanced(label, len(event.data))
        if not receiver.complete:
            raise SourceChanged(f"{posixpath.dirname(targets[0].shown)}: {receiver.received} "
                                f"of {receiver.expected} bytes of a batch arrived")
        receiver.finish()
    finally:
        receiver.close()  # what arrived whole and verified is stored, even on a failure
    opts.progress.file_done(label)
    return results
