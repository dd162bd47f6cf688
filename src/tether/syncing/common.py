"""What both ends of a sync share: its options and result, the endpoint a side talks through,
filters, and the caps (docs/PROTOCOL.md, "Sync"; docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from tether.protocol import Data, Message

MAX_ENTRIES = 1_000_000  # entries one sync may list (the destination holds their names)
MAX_SIGNATURE = 64 * 1024 * 1024  # bytes of one file's signature (a 1 TiB file's ~330 MiB: no)
LIST_HEADER = 40 * 1024  # a source closes a sync_list at this much (estimated) header
RESUME_MIN = 1024 * 1024  # a new file's kept partial is resumed from at this size

T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]  # (fn, *args): fn(*args) on a pool (the server's disk's)


async def off_loop(offload: Offload | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a worker thread — ``offload``'s (the server's disk pool, a share per
    client identity), else asyncio's default executor — so that a large file's disk work (a
    signature, a delta's copies, a verification, an fsync) does not stall the event loop and
    every other stream on it. Cancelled, it still waits for the thread before it raises: the
    caller's ``finally`` then closes descriptors no thread is using (a closed fd's number is
    soon another file's)."""
    job: asyncio.Future[T] = (
        asyncio.ensure_future(offload(fn, *args)) if offload is not None
        else asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args)))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        while not job.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([job])
        if not job.cancelled():
            job.exception()  # retrieved: the cancellation is what the caller hears of
        raise


class Endpoint(Protocol):
    """One side's view of a sync stream (the client's stream handle, the server's session)."""

    stream: int

    def send(self, msg: Message) -> None: ...
    async def send_data(self, data: bytes | bytearray | memoryview) -> None: ...
    async def drain(self) -> None: ...
    async def next(self) -> Message | Data: ...


@dataclass(frozen=True)
class SyncOptions:
    checksum: bool = False
    delete: bool = False
    dry_run: bool = False
    safe_links: bool = False
    filters: tuple[str, ...] = ()
    hash_cache: bool = True  # each side may keep its hashes (storage/hashcache.py)


class Progress(Protocol):
    """What a sync reports as it goes (the CLI draws it): totals once listed, bytes as sent."""

    def total(self, files: int, size: int) -> None: ...
    def file_started(self, name: str, size: int, offset: int) -> None: ...
    def advanced(self, name: str, size: int) -> None: ...
    def file_done(self, name: str) -> None: ...


@dataclass(frozen=True)
class SyncEntry:
    path: str
    action: str


@dataclass
class SyncResult:
    """What a sync did (or, in a dry run, would do). ``sent``: files whose content was sent;
    ``skipped``: entries already up to date; ``bytes_sent``: file payload on the wire after
    deltas (whole files, delta records); ``bytes_matched``: bytes reused from the destination's
    old copies; ``entries``: every entry that changed, with its action."""

    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes_sent: int = 0
    bytes_matched: int = 0
    seconds: float = 0.0
    entries: list[SyncEntry] = field(default_factory=list)
    bytes_signatures: int = 0  # signature bytes the destination sent
    changed: list[str] = field(default_factory=list)  # files that changed while read: not stored

    def note(self, path: str, action: str) -> None:
        if action:
            self.entries.append(SyncEntry(path, action))
        else:
            self.skipped += 1

    def note_list(self, names: list[str], actions: list[str]) -> None:
        """:meth:`note` of a whole list's answer (thousands of entries, most unchanged)."""
        self.skipped += actions.count("")
        self.entries += [SyncEntry(name, action) for name, action in zip(names, actions,
                                                                          strict=True) if action]

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "skipped": self.skipped, "deleted": self.deleted,
                "bytes_sent": self.bytes_sent, "bytes_matched": self.bytes_matched,
                "seconds": round(self.seconds, 6),
                "entries": [{"path": e.path, "action": e.action} for e in self.entries],
                "bytes_signatures": self.bytes_signatures, "changed": self.changed}


class Filters:
    """gitignore lines (``!`` re-includes), matched with ``pathspec``; a directory is matched
    with a trailing slash, so ``build/`` names directories only."""

    def __init__(self, lines: tuple[str, ...] | list[str]) -> None:
        self.spec: Any = None
        if lines:
            import pathspec

            self.spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def excluded(self, name: str, is_dir: bool) -> bool:
        if self.spec is None:
            return False
        return bool(self.spec.match_file(name + "/" if is_dir else name))


class NoProgress:
    def total(self, files: int, size: int) -> None:
        pass

    def file_started(self, name: str, size: int, offset: int) -> None:
        pass

    def advanced(self, name: str, size: int) -> None:
        pass

    def file_done(self, name: str) -> None:
        pass
