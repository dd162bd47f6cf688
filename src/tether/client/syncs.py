"""``sync`` over a :class:`~tether.client.api.Connection`: a push makes a server tree like local
sources, a pull makes a local tree like server sources (docs/PROTOCOL.md, "Sync").

rsync's source rule: ``SRC/`` (a trailing slash) syncs the contents of SRC into DEST, ``SRC``
the directory itself, under its name. A pull writes only below the local DEST its user named,
through no-follow walks, and a single pulled file is named from the user's own words, never the
server's (the CVE-2019-6111 class, as ``get``).

Each side keeps a cache of its files' content hashes (storage/hashcache.py): the client's is
under its home (``TETHER_HOME/cache/hashes``), so that ``--checksum`` over an unchanged tree
costs a ``stat`` per file; ``hash_cache=False`` turns it off on both sides.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from typing import TYPE_CHECKING

from tether.errors import BadRequest, NotFound
from tether.home import home_path
from tether.protocol.sync_messages import (
    Sync,
)
from tether.storage.hashcache import HashCaches, cache_dir
from tether.storage.names import check_name, open_dir
from tether.storage.tree import DestTree, SourceTree
from tether.syncing.common import NoProgress, Progress, SyncOptions, SyncResult
from tether.syncing.source import Root

if TYPE_CHECKING:
    from tether.client.process import StreamHandle
    from tether.client.transfer_base import StreamOpener
    from tether.protocol import Data, Message


class _Endpoint:
    """A stream handle as a sync side's endpoint."""

    def __init__(self, conn: StreamOpener, handle: StreamHandle) -> None:
        self.conn = conn
        self.handle = handle
        self.stream = handle.stream

    def send(self, msg: Message) -> None:
        self.handle.send(msg)

    async def send_data(self, data: bytes | bytearray | memoryview) -> None:
        await self.handle.send_data(memoryview(data))

    async def drain(self) -> None:
        await self.conn._framed.drain()  # type: ignore[attr-defined]

    async def next(self) -> Message | Data:
        return await self.handle.next()


def filter_lines(excludes: list[str], includes: list[str], exclude_from: list[str]) -> list[str]:
    """The gitignore lines of ``--exclude-from`` files, ``--exclude`` and ``--include`` (as
    ``!`` lines, last, so an include wins over the excludes before it)."""
    lines: list[str] = []
    for path in exclude_from:
        try:
            with open(path, encoding="utf-8") as fh:
                lines += [line.rstrip("\n") for line in fh]
        except OSError as exc:
            raise NotFound(f"--exclude-from {path}: {exc.strerror}") from exc
    return lines + list(excludes) + [f"!{pattern}" for pattern in includes]


def source_name(path: str) -> str:
    """The name a source takes below the destination: ``""`` for its contents (``SRC/``,
    ``.``), else its base name."""
    if path.endswith("/") or posixpath.basename(path) in ("", ".", ".."):
        return ""
    return posixpath.basename(path)


def local_root(path: str, caches: HashCaches) -> Root:
    """A local source, opened as its user named it (symlinks in their own path followed)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotFound(f"{path}: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        fd = open_dir(path)
        return Root(SourceTree(fd, path), source_name(path), hashes=caches.tree(fd))
    if not stat.S_ISREG(st.st_mode) or path.endswith("/"):
        raise BadRequest(f"{path} is not a directory or a regular file")
    name = posixpath.basename(path)
    parent = posixpath.dirname(path) or "."
    fd = open_dir(parent)
    return Root(SourceTree(fd, parent), name, name, caches.tree(fd, whole=False))


def local_caches(conn: StreamOpener, opts: SyncOptions) -> HashCaches:
    """The client's hash caches (under the connection's home), or none."""
    home = getattr(conn, "home", None)
    return HashCaches(cache_dir(home_path(home)) if opts.hash_cache else None)





def local_opener(dest: str, user_name: str, dry_run: bool
                 ) -> Callable[[bool, str], tuple[DestTree, str | None]]:
    """Where a pull stores: DEST (created if missing, its parent must exist); a single file
    into DEST if it is a directory (or ends in /) under ``user_name``, else as DEST."""

    def opener(single: bool, first: str) -> tuple[DestTree, str | None]:
        if single:
            if dest.endswith("/") or os.path.isdir(dest):
                return DestTree(open_dir(dest), dest), check_name(user_name)
            parent = posixpath.dirname(dest.rstrip("/")) or "."
            return DestTree(open_dir(parent), parent), check_name(posixpath.basename(dest))
        if not dry_run:
            try:
                os.mkdir(dest, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                raise NotFound(f"{dest}: {exc.strerror}") from exc
        try:
            return DestTree(open_dir(dest), dest), None
        except NotFound:
            if not dry_run:
                raise
            return DestTree(-1, dest), None  # a dry run into a DEST that does not exist yet

    return opener


async def push(conn: StreamOpener, sources: list[str], dest: str, opts: SyncOptions,
               progress: Progress | None = None) -> SyncResult:
    from tether.syncing.source import SourceSide  # each direction loads only its side

    started = time.monotonic()
    caches = local_caches(conn, opts)
    roots: list[Root] = []
    try:
        roots += [local_root(path, caches) for path in sources]
        single = len(roots) == 1 and roots[0].file is not None
        handle = conn.open_stream(Sync, path=dest, push=True, single=single,
                                  checksum=opts.checksum, delete=opts.delete,
                                  dry_run=opts.dry_run, safe_links=opts.safe_links,
                                  filters=list(opts.filters), hash_cache=opts.hash_cache)
        try:
            result = await SourceSide(
                _Endpoint(conn, handle), roots, opts, client=True,
                progress=progress or NoProgress(),
                trusted=conn._framed.authenticated).run()  # type: ignore[attr-defined]
        except BaseException:
            handle.abandon()
            raise
    finally:
        for root in roots:
            root.tree.close()
        caches.save(False)  # what a failed run learned (a run that ended saved already)
    result.seconds = time.monotonic() - started
    return result


async def pull(conn: StreamOpener, sources: list[str], dest: str, opts: SyncOptions,
               progress: Progress | None = None) -> SyncResult:
    from tether.syncing.dest import DestSide

    started = time.monotonic()
    names = [source_name(path) for path in sources]
    maybe_single = len(sources) == 1 and names[0] != ""
    handle = conn.open_stream(Sync, path="", push=False, sources=sources, names=names,
                              checksum=opts.checksum, delete=opts.delete, dry_run=opts.dry_run,
                              safe_links=opts.safe_links, filters=list(opts.filters),
                              hash_cache=opts.hash_cache)
    caches = local_caches(conn, opts)
    side = DestSide(_Endpoint(conn, handle),
                    local_opener(dest, names[0] if maybe_single else "", opts.dry_run), opts,
                    client=True, single=None if maybe_single else False, links_inside=True,
                    progress=progress or NoProgress(), caches=caches,
                    trusted=conn._framed.authenticated)  # type: ignore[attr-defined]
    try:
        result = await side.run()
    except BaseException:
        handle.abandon()
        raise
    finally:
        caches.save(False)  # what a failed run learned (a run that ended saved already)
    result.seconds = time.monotonic() - started
    return result


if TYPE_CHECKING:
    from collections.abc import Callable
