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
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tether.errors import BadRequest, NotFound
from tether.home import home_path
from tether.protocol.sync_messages import (
    Sync,
)
from tether.storage.hashcache import HashCaches, cache_dir
from tether.storage.names import check_name, open_dir
from tether.storage.tree import DestTree, SourceTree
from tether.syncing.common import NoProgress, Progress, SyncOptions, SyncResult
from tether.syncing.source import Entry, Listing, Root

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


def source_list(src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """One source or several, as paths."""
    if isinstance(src, str | os.PathLike):
        return [os.fspath(src)]
    return [os.fspath(s) for s in src]


def sync_options(*, checksum: bool = False, delete: bool = False, dry_run: bool = False,
                 exclude: Sequence[str] = (), include: Sequence[str] = (),
                 exclude_from: Sequence[str | os.PathLike[str]] = (),
                 safe_links: bool = False, hash_cache: bool = True) -> SyncOptions:
    """A sync's options from the API's keywords (``--exclude-from`` files read now)."""
    return SyncOptions(checksum=checksum, delete=delete, dry_run=dry_run, safe_links=safe_links,
                       hash_cache=hash_cache,
                       filters=tuple(filter_lines(list(exclude), list(include),
                                                  [os.fspath(p) for p in exclude_from])))


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
    return home_caches(getattr(conn, "home", None), opts)


def home_caches(home: str | os.PathLike[str] | None, opts: SyncOptions) -> HashCaches:
    """The hash caches under ``home`` (None: the default home), or none."""
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


def local_roots(sources: list[str], caches: HashCaches) -> list[Root]:
    """Every source opened (none left open if one cannot be)."""
    roots: list[Root] = []
    try:
        for path in sources:
            roots.append(local_root(path, caches))
    except BaseException:
        for root in roots:
            root.tree.close()
        raise
    return roots


SHARED_BYTES = 64 * 1024 * 1024  # small files' bytes a push to several hosts keeps for the rest


class SharedListing(Listing):
    """A push of the same sources to several hosts at once (``connect_many(...).sync``): the
    sources opened and walked once, and each small file read once, for all of them.

    Each list is kept once made, so that a host that asks for it later gets the same entries
    under the same numbers (the entries themselves are one list for every host, where each host
    kept its own before). Small files' bytes stay up to ``budget`` bytes, the oldest
    read out first: hosts that move together read each file once; a host that falls far behind
    reads again what the others no longer hold. The first host opens the sources; a
    failure to (a missing source, an unreadable ``--exclude-from``) is every host's. Not safe
    across threads: the hosts' tasks share one event loop."""

    def __init__(self, sources: list[str], options: dict[str, Any],
                 budget: int = SHARED_BYTES, home: str | os.PathLike[str] | None = None
                 ) -> None:
        self.sources, self.options, self.budget, self.home = sources, options, budget, home
        self.opts = SyncOptions()
        self.roots: list[Root] | None = None
        self.caches: HashCaches | None = None
        self.entries = []
        self._failure: BaseException | None = None
        self._made: list[tuple[int, dict[str, list]]] = []  # type: ignore[type-arg]
        self._making: Iterator[tuple[int, dict[str, list]]] = iter(())  # type: ignore[type-arg]
        self._small: OrderedDict[int, bytes | None] = OrderedDict()  # by entry number
        self._held = 0  # what _small costs

    def open(self) -> list[Root]:
        """The opened sources (opened by the first caller), with the hash caches under
        ``home`` (the fleet's)."""
        if self._failure is not None:
            raise self._failure
        if self.roots is None:
            try:
                self.opts = sync_options(**self.options)
                self.caches = home_caches(self.home, self.opts)
                self.roots = local_roots(self.sources, self.caches)
            except BaseException as exc:
                self._failure = exc
                raise
            super().__init__(self.roots, self.opts)
            self._making = super().lists()
        return self.roots

    def lists(self) -> Iterator[tuple[int, dict[str, list]]]:  # type: ignore[type-arg]
        done = 0
        while True:
            if done == len(self._made):
                if self._failure is not None:
                    raise self._failure  # the walk failed for an earlier host: for every host
                try:
                    item = next(self._making, None)
                except BaseException as exc:
                    self._failure = exc
                    raise
                if item is None:
                    return
                self._made.append(item)
            yield self._made[done]
            done += 1

    def small(self, index: int, entry: Entry) -> bytes | None:
        got = self._small.get(index, _NOT_KEPT)
        if got is not _NOT_KEPT:
            return got  # type: ignore[return-value]
        got = super().small(index, entry)
        cost = _cost(got)
        if cost <= self.budget:
            self._small[index] = got
            self._held += cost
            while self._held > self.budget:  # the oldest read out first: hosts move forward
                self._held -= _cost(self._small.popitem(last=False)[1])
        return got

    def close(self) -> None:
        for root in self.roots or []:
            root.tree.close()
        if self.caches is not None:
            self.caches.save(False)  # what a failed run learned (a run that ended saved already)


_NOT_KEPT = object()


def _cost(got: bytes | None) -> int:
    """What a kept small file costs against the budget (its bytes and the keeping)."""
    return (len(got) if got is not None else 0) + 100


async def push(conn: StreamOpener, sources: list[str], dest: str, opts: SyncOptions,
               progress: Progress | None = None, shared: SharedListing | None = None
               ) -> SyncResult:
    """``sources`` to ``dest`` on the server; with ``shared`` (one of several hosts), its
    sources, options and listing instead of this host's own."""
    from tether.syncing.source import SourceSide  # each direction loads only its side

    started = time.monotonic()
    # a shared listing's sources and caches are the fleet's, kept open for the other hosts
    caches = local_caches(conn, opts) if shared is None else HashCaches(None)
    roots: list[Root] = []
    try:
        if shared is not None:
            roots, opts = shared.open(), shared.opts
        else:
            roots += [local_root(path, caches) for path in sources]
        single = len(roots) == 1 and roots[0].file is not None
        handle = conn.open_stream(Sync, path=dest, push=True, single=single,
                                  checksum=opts.checksum, delete=opts.delete,
                                  dry_run=opts.dry_run, safe_links=opts.safe_links,
                                  filters=list(opts.filters), hash_cache=opts.hash_cache)
        try:
            result = await SourceSide(
                _Endpoint(conn, handle), roots, opts, client=True,
                progress=progress or NoProgress(), listing=shared,
                trusted=conn.tls).run()  # type: ignore[attr-defined]
        except BaseException:
            handle.abandon()
            raise
    finally:
        if shared is None:
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
                    trusted=conn.tls)  # type: ignore[attr-defined]
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
