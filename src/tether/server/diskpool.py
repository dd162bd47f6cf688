"""Long file work off the event loop: hashing a resumed prefix (up to a file's size, at an offset
the client chooses), a put's commit (fsync), a batch's small files (each written and fsynced:
about 2 ms apiece on ext4, so one DATA frame completing 512 of them held the loop a second), and
the reads of a get or fetch. Done on the loop, four resume hashes of a 40 GiB sparse file froze
every client of the server.

The work runs on a bounded pool of threads (``--disk-threads``), and one client identity may use
at most ``--disk-threads-per-client`` of them at once, so one identity's hashing cannot occupy
them all: the others' transfers still get threads, and the loop (commands, shells) never waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]  # run file work on the pool: (fn, *args, cleanup=)


async def inline(fn: Callable[..., Any], *args: Any, cleanup: Any = None) -> Any:
    """No pool: the work runs here (tests, tools)."""
    return fn(*args)


class Lease:
    """Something a pool thread may be using (an open file, a batch's directories): :meth:`close`
    closes it at once if no thread is in :meth:`call`, else when the last one leaves, so that a
    stream ended mid-work never closes a descriptor under a thread (which could then use a
    number the kernel gave to another file)."""

    def __init__(self, close: Callable[[], object]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False
        self._closed = False

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` (on a pool thread), unless the lease is closed: then OSError."""
        with self._lock:
            if self._closing:
                raise OSError("the operation was ended")
            self._users += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._users -= 1
                last = self._closing and not self._users and not self._closed
                self._closed = self._closed or last
            if last:
                self._close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            now = not self._users and not self._closed
            self._closed = self._closed or now
        if now:
            self._close()


class DiskPool:
    """A bounded thread pool with a fair share per client identity."""

    def __init__(self, threads: int, per_client: int) -> None:
        self.threads = max(1, threads)
        self.per_client = max(1, min(per_client, self.threads))
        self._executor: ThreadPoolExecutor | None = None
        self._shares: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    async def run(self, client: str, fn: Callable[..., T], *args: object,
                  cleanup: Callable[[T], object] | None = None) -> T:
        """``fn(*args)`` on a pool thread, waiting for ``client``'s share first. If the caller
        is cancelled while ``fn`` runs (its connection went away), ``cleanup`` gets what ``fn``
        returns once it does (a thread cannot be stopped; what it opened must be closed)."""
        share = self._shares.get(client)
        if share is None:
            share = self._shares[client] = asyncio.Semaphore(self.per_client)
        self._users[client] = self._users.get(client, 0) + 1
        try:
            async with share:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.threads,
                                                        thread_name_prefix="tether-disk")
                work = self._executor.submit(fn, *args)
                try:
                    return await asyncio.wrap_future(work)
                except asyncio.CancelledError:
                    if cleanup is not None:
                        work.add_done_callback(lambda done: _clean(done, cleanup))
                    raise
        finally:
            self._users[client] -= 1
            if not self._users[client]:  # nobody waits: forget the identity (bounded state)
                del self._users[client]
                del self._shares[client]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _clean(done: Future[T], cleanup: Callable[[T], object]) -> None:
    if not done.cancelled() and done.exception() is None:
        cleanup(done.result())
