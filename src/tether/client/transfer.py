"""put and get over a :class:`~tether.client.api.Connection`: files, trees, resume, verification.

The client writes only under the local path its user named: names for single files come from the
user's own arguments, and every entry a server lists for a recursive get is checked component by
component (no '', '.', '..', '/', '\\' or NUL) and created with directory-fd-relative,
no-follow opens, so a hostile server can neither choose a name nor lead a write out through a
symlink (the CVE-2019-6111 / CVE-2018-20685 class).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tether.client.listing import list_tree, skip_links_out
from tether.client.transfer_base import (
    FileResult,
    Options,
    Progress,
    SkippedLink,
    StreamOpener,
    TransferResult,
    _expect,
)
from tether.errors import (
    AlreadyExists,
    BadRequest,
    NotFound,
    PermissionDenied,
    RemoteProtocolError,
    SourceChanged,
    UnsafePath,
)
from tether.protocol import (
    Begin,
    Commit,
    Data,
    Done,
    Entry,
    Get,
    Meta,
    Put,
    Ready,
)
from tether.storage.batch import SMALL_FILE
from tether.storage.fsops import fs
from tether.storage.names import (
    check_name,
    destination_exists,
    link_stays_inside,
    open_dir,
    walk_dirs,
)
from tether.storage.partial import PartialFile
from tether.storage.source import CHUNK, digest, new_hasher
from tether.syncing.common import NoProgress

if TYPE_CHECKING:
    from tether.client.process import StreamHandle

Connection = StreamOpener  # what put and get need of a connection

RESUME_MIN = 1024 * 1024  # smaller files are simply sent again: no round trip to ask
IN_FLIGHT = 32  # transfers open at once during a tree transfer
BATCHES_IN_FLIGHT = 4  # batches of small files open at once (docs/PROTOCOL.md, "Batches")


def _hash_prefix(fh: object, size: int) -> object:
    hasher, pos = new_hasher(), 0
    while pos < size:
        chunk = fh.read(min(CHUNK, size - pos))  # type: ignore[attr-defined]
        if not chunk:
            break
        hasher.update(chunk)
        pos += len(chunk)
    return hasher


# --- put ----------------------------------------------------------------------------------------


async def put(conn: Connection, sources: list[Path], remote: str, *, recursive: bool,
              opts: Options) -> TransferResult:
    started = time.monotonic()
    result = TransferResult()
    if len(sources) > 1 and not remote.endswith("/"):
        remote += "/"  # several sources: the destination must be a directory
    plans = [_plan_source(src, recursive) for src in sources]
    shown = not isinstance(opts.progress, NoProgress)
    if shown:  # a progress display needs the totals for its ETA: count the trees first
        plans = [_counted(src, plan) for src, plan in zip(sources, plans, strict=True)]
    totals = [sum(p[0] for p in plans), sum(p[1] for p in plans)]
    opts.progress.total(*totals)

    def walked(files: int, size: int) -> None:
        if not shown:  # without a display nobody asks; with one, the count came first
            totals[0] += files
            totals[1] += size
            opts.progress.total(*totals)

    for src, (_files, _size, is_tree) in zip(sources, plans, strict=True):
        if is_tree:
            await _put_tree(conn, src, remote, opts, result, walked)
        else:
            result.files.append(await _put_file(conn, _open_put(conn, src, remote, src.name,
                                                                opts), src, opts))
    result.seconds = time.monotonic() - started
    return result


def _counted(src: Path, plan: tuple[int, int, bool]) -> tuple[int, int, bool]:
    """A tree's plan with its files and bytes counted (one walk before the sending one)."""
    if not plan[2]:
        return plan
    files = size = 0
    for entry in _walk_tree(src):
        if stat.S_ISREG(entry.st.st_mode):
            files, size = files + 1, size + entry.st.st_size
    return files, size, True


def _plan_source(src: Path, recursive: bool) -> tuple[int, int, bool]:
    """(files, bytes, whether it is a tree) a source will send; a tree is walked while it is
    sent, so its files are counted then. Refuses a directory without -r."""
    try:
        st = src.stat()
    except OSError as exc:
        raise NotFound(f"{src}: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise BadRequest(f"{src} is a directory (use -r)")
        return 0, 0, True
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"{src} is not a regular file")
    return 1, st.st_size, False


@dataclass(frozen=True, slots=True)
class _Local:
    """One entry of a local tree, from the single walk a put -r makes."""

    prefix: str  # its directory below the tree's root, "/"-terminated ("" at the top)
    name: str
    path: str
    st: os.stat_result


def _walk_tree(src: Path) -> Iterator[_Local]:
    """Every entry below ``src``, each directory before its contents, symlinks not followed."""
    todo = [("", str(src))]
    while todo:
        prefix, path = todo.pop()
        with os.scandir(path) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        below = []
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            yield _Local(prefix, entry.name, entry.path, st)
            if stat.S_ISDIR(st.st_mode):
                below.append((f"{prefix}{entry.name}/", entry.path))
        todo.extend(reversed(below))


def _open_put(conn: Connection, src: Path, path: str, name: str,
              opts: Options) -> tuple[StreamHandle, os.stat_result, bool]:
    st = src.stat()
    resume = opts.resume and st.st_size >= RESUME_MIN
    handle = conn.open_stream(
        Put, path=path, name=name, kind="file", size=st.st_size, mode=st.st_mode & 0o7777,
        mtime_ns=st.st_mtime_ns, force=opts.force, rename=opts.rename, resume=resume,
    )
    return handle, st, resume


async def _put_file(conn: Connection, opened: tuple[StreamHandle, os.stat_result, bool],
                    src: Path, opts: Options) -> FileResult:
    handle, st, resume = opened
    size = st.st_size
    try:
        with src.open("rb") as fh:
            hasher, start = new_hasher(), 0
            if resume:
                ready = await _expect(handle, Ready)
                assert isinstance(ready, Ready)
                if 0 < ready.offset <= size:
                    prefix = _hash_prefix(fh, ready.offset)
                    if digest(prefix.copy()) == ready.prefix_hash:  # type: ignore[attr-defined]
                        hasher, start = prefix, ready.offset
                handle.send(Begin(offset=start, stream=handle.stream))
                fh.seek(start)
            opts.progress.file_started(src.name, size, start)
            pos = start
            while pos < size:
                chunk = fh.read(min(CHUNK, size - pos))
                if not chunk:
                    raise SourceChanged(f"{src} shrank while it was being sent")
                hasher.update(chunk)
                await handle.send_data(chunk)
                pos += len(chunk)
                opts.progress.advanced(src.name, len(chunk))
            if fh.read(1):
                raise SourceChanged(f"{src} grew while it was being sent")
        handle.send(Commit(size=size, hash=digest(hasher), stream=handle.stream))
        done = await _expect(handle, Done)
    except BaseException:
        handle.abandon()
        raise
    assert isinstance(done, Done)
    opts.progress.file_done(src.name)
    return FileResult(done.path, "file", done.size, done.hash, done.resumed_from)


async def _put_entry(handle: StreamHandle, kind: str) -> FileResult:
    done = await _expect(handle, Done)
    assert isinstance(done, Done)
    return FileResult(done.path, kind)


async def _put_tree(conn: Connection, src: Path, remote: str, opts: Options,
                    result: TransferResult, walked: Callable[[int, int], None]) -> None:
    """The tree's root first (to learn where it lands), then every entry pipelined in walk
    order: directories and symlinks one stream each, small files many to a batch, large files
    one stream each (resumable)."""
    from tether.client.batches import Batcher, Source, open_batch, send_batch

    root = conn.open_stream(Put, path=remote, name=src.name, kind="dir",
                            mode=src.stat().st_mode & 0o7777)
    done = await _expect(root, Done)
    assert isinstance(done, Done)
    result.files.append(FileResult(done.path, "dir"))
    base = done.path.rstrip("/")
    if not done.created and not (opts.force or opts.rename):
        await _refuse_existing(conn, base, src)
    limit = asyncio.Semaphore(IN_FLIGHT)
    batches = asyncio.Semaphore(BATCHES_IN_FLIGHT)
    tasks: list[asyncio.Task[list[FileResult]]] = []
    batcher: Batcher[Source] = Batcher()

    def spawn(work: Awaitable[list[FileResult]], sem: asyncio.Semaphore) -> None:
        async def run() -> list[FileResult]:
            try:
                return await work
            finally:
                sem.release()
        tasks.append(asyncio.create_task(run()))

    async def flush() -> None:
        if batcher.names:
            await batches.acquire()
            spawn(send_batch(open_batch(conn, base, *batcher.take(), opts), opts), batches)

    files = size = 0
    try:
        for entry in _walk_tree(src):
            name, path, lst = entry.name, entry.path, entry.st
            if stat.S_ISREG(lst.st_mode):
                files, size = files + 1, size + lst.st_size
            where = base + "/" + entry.prefix
            if stat.S_ISREG(lst.st_mode) and lst.st_size <= SMALL_FILE:
                if batcher.full_before(entry.prefix + name, lst.st_size):
                    await flush()
                batcher.add(entry.prefix + name, lst.st_size, (path, lst))
                continue
            if stat.S_ISLNK(lst.st_mode) and opts.safe_links:
                target = os.readlink(path)
                if not link_stays_inside(entry.prefix.count("/"), target):
                    result.skipped.append(SkippedLink(path, target))
                    continue
            await limit.acquire()  # streams open in walk order: parents before children
            if stat.S_ISLNK(lst.st_mode):
                target = fs.readlink(path)
                spawn(_one(_put_entry(conn.open_stream(
                    Put, path=where, name=name, kind="symlink", target=target,
                    force=opts.force), "symlink")), limit)
            elif stat.S_ISDIR(lst.st_mode):
                spawn(_one(_put_entry(conn.open_stream(
                    Put, path=where, name=name, kind="dir", mode=lst.st_mode & 0o7777),
                    "dir")), limit)
            elif stat.S_ISREG(lst.st_mode):
                spawn(_one(_put_file(conn, _open_put(conn, Path(path), where, name, opts),
                                     Path(path), opts)), limit)
            else:
                limit.release()  # devices, FIFOs, sockets: not sent
        await flush()
        walked(files, size)
        for done in await asyncio.gather(*tasks):
            result.files.extend(done)
    finally:
        for task in tasks:
            task.cancel()


async def _refuse_existing(conn: Connection, base: str, src: Path) -> None:
    """Into a tree that already exists, refuse a put that would meet an existing entry before
    anything is written (no directories left behind by a refusal that comes later). Needs the
    ``get`` permission to list; without it the server's own per-entry refusals stand."""
    try:
        remote = {"/".join(e.parts): e.kind for e in await list_tree(conn, base)}
    except PermissionDenied:
        return
    for entry in _walk_tree(src):
        rel = entry.prefix + entry.name
        kind = remote.get(rel)
        if kind is None or (kind == "dir" and stat.S_ISDIR(entry.st.st_mode)):
            continue
        raise AlreadyExists(f"{base}/{rel} exists (use --force to replace it or --rename); "
                            f"nothing was written")


async def _one(work: Awaitable[FileResult]) -> list[FileResult]:
    return [await work]


# --- get ----------------------------------------------------------------------------------------


def _local_target(local: Path, remote: str) -> tuple[Path, str]:
    """(directory, name) a get of ``remote`` into ``local`` writes, from the user's own words."""
    name = posixpath.basename(remote.rstrip("/"))
    if local.is_dir():
        try:
            return local, check_name(name)
        except UnsafePath as exc:
            raise BadRequest(f"cannot name a local file after {remote!r}") from exc
    return local.parent, check_name(local.name)


async def get(conn: Connection, remotes: list[str], local: Path, *, recursive: bool,
              opts: Options) -> TransferResult:
    started = time.monotonic()
    result = TransferResult()
    if len(remotes) > 1 and not local.is_dir():
        raise NotFound(f"{local} is not a directory (several sources need one)")
    for remote in remotes:
        if recursive:
            await _get_tree(conn, remote, local, opts, result)
        else:
            directory, name = _local_target(local, remote)
            dir_fd = _open_local_dir(directory)
            try:
                opts.progress.total(1, 0)
                result.files.append(await _get_file(conn, remote, dir_fd, name,
                                                    str(directory / name), opts))
            finally:
                fs.close(dir_fd)
    result.seconds = time.monotonic() - started
    return result


def _open_local_dir(directory: Path) -> int:
    return open_dir(str(directory))


async def _get_file(conn: Connection, remote: str, dir_fd: int, name: str, shown: str,
                    opts: Options, size_hint: int = -1) -> FileResult:
    if not (opts.force or opts.rename) and destination_exists(dir_fd, name):
        raise AlreadyExists(f"{shown} exists (use --force to replace it or --rename)")
    partial = PartialFile(dir_fd, name, resume=opts.resume)
    try:
        handle = conn.open_stream(Get, path=remote, offset=partial.offset,
                                  prefix_hash=partial.prefix_hash)
        try:
            meta = await _expect(handle, Meta)
            assert isinstance(meta, Meta)
            if meta.offset == 0 and partial.offset:
                partial.restart()
            elif meta.offset != partial.offset:
                raise RemoteProtocolError(f"server resumed at {meta.offset}, not {partial.offset}")
            opts.progress.file_started(name, meta.size, meta.offset)
            while True:
                event = await handle.next()
                if isinstance(event, Done):
                    break
                assert isinstance(event, Data)  # the get table allows nothing else now
                if partial.written + len(event.data) > meta.size:
                    raise SourceChanged(f"{remote} sent more than its {meta.size} bytes")
                partial.write(event.data)
                opts.progress.advanced(name, len(event.data))
        except BaseException:
            handle.abandon()
            raise
        if partial.written != meta.size:
            raise SourceChanged(f"{remote}: {partial.written} of {meta.size} bytes arrived")
        resumed = partial.offset
        final = partial.commit(event.hash, meta.mode & 0o777, meta.mtime_ns, force=opts.force,
                               rename=opts.rename)
    except BaseException:
        if partial.written == 0:
            partial.discard()  # nothing to resume: leave no empty partial behind
        raise
    finally:
        partial.close()
    opts.progress.file_done(name)
    return FileResult(str(Path(shown).with_name(final)), "file", meta.size, event.hash, resumed)


async def _get_tree(conn: Connection, remote: str, local: Path, opts: Options,
                    result: TransferResult) -> None:
    entries = await list_tree(conn, remote)  # everything checked, before writing anything
    if opts.safe_links:
        entries = skip_links_out(entries, remote, result)
    if entries and not entries[0].parts and entries[0].kind == "file":
        directory, name = _local_target(local, remote)
        dir_fd = _open_local_dir(directory)
        try:
            result.files.append(await _get_file(conn, remote, dir_fd, name,
                                                str(directory / name), opts))
        finally:
            fs.close(dir_fd)
        return
    if local.is_dir():
        top = local / check_name(posixpath.basename(remote.rstrip("/")) or "root")
    else:
        top = local
    if top.is_symlink() or (top.exists() and not top.is_dir()):
        raise AlreadyExists(f"{top} exists and is not a directory: the tree {remote} needs "
                            f"a directory (give an existing directory or a new name)")
    top.mkdir(exist_ok=True)
    root_fd = _open_local_dir(top)
    files = [e for e in entries if e.kind == "file"]
    opts.progress.total(len(files), sum(e.size for e in files))
    try:
        await _get_entries(conn, remote, root_fd, top, entries, opts, result)
    finally:
        fs.close(root_fd)


async def _get_entries(conn: Connection, remote: str, root_fd: int, top: Path,
                       entries: list[Entry], opts: Options, result: TransferResult) -> None:
    from tether.client.batches import Batcher, fetch_batch

    limit = asyncio.Semaphore(IN_FLIGHT)
    batches = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    async def fetch(entry: Entry) -> list[FileResult]:
        async with limit:
            dir_fd = walk_dirs(root_fd, entry.parts[:-1])
            try:
                return [await _get_file(conn, posixpath.join(remote, *entry.parts), dir_fd,
                                        entry.parts[-1], str(top.joinpath(*entry.parts)),
                                        opts)]
            finally:
                fs.close(dir_fd)

    async def fetch_many(group: list[Entry]) -> list[FileResult]:
        async with batches:
            return await fetch_batch(conn, remote, root_fd, top, group, opts)

    tasks = []
    batcher: Batcher[Entry] = Batcher()
    for entry in entries:
        if not entry.parts:
            continue
        if entry.kind == "dir":
            dir_fd = walk_dirs(root_fd, entry.parts[:-1])
            try:
                with contextlib.suppress(FileExistsError):
                    fs.mkdir(entry.parts[-1], 0o700, dir_fd=dir_fd)
            finally:
                fs.close(dir_fd)
            made = walk_dirs(root_fd, entry.parts)  # an existing symlink there is refused
            try:
                with contextlib.suppress(OSError):
                    fs.fchmod(made, entry.mode & 0o777)
            finally:
                fs.close(made)
            result.files.append(FileResult(str(top.joinpath(*entry.parts)), "dir"))
        elif entry.kind == "symlink":
            dir_fd = walk_dirs(root_fd, entry.parts[:-1])
            try:
                if opts.force and destination_exists(dir_fd, entry.parts[-1]):
                    fs.unlink(entry.parts[-1], dir_fd=dir_fd)
                fs.symlink(entry.target or "", entry.parts[-1], dir_fd=dir_fd)
            except FileExistsError as exc:
                raise AlreadyExists(f"{top.joinpath(*entry.parts)} exists") from exc
            finally:
                fs.close(dir_fd)
            result.files.append(FileResult(str(top.joinpath(*entry.parts)), "symlink"))
        elif entry.kind == "file" and entry.size <= SMALL_FILE:
            name = "/".join(entry.parts)
            if batcher.full_before(name, entry.size):
                tasks.append(asyncio.create_task(fetch_many(batcher.take()[1])))
            batcher.add(name, entry.size, entry)
        elif entry.kind == "file":
            tasks.append(asyncio.create_task(fetch(entry)))
    if batcher.names:
        tasks.append(asyncio.create_task(fetch_many(batcher.take()[1])))
    try:
        for files in await asyncio.gather(*tasks):
            result.files.extend(files)
    finally:
        for task in tasks:
            task.cancel()


__all__ = ["FileResult", "Options", "Progress", "TransferResult", "get", "put"]
