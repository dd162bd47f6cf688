"""Long file work off the event loop: hashing a resumed prefix (up to a file's size, at an offset
the client chooses), and the fsync of a committed file. Done on the loop, four such requests on
a 40 GiB sparse file froze every client of the server.

The work runs on a bounded pool of threads (``--disk-threads``), and one client identity may use
at most ``--disk-threads-per-client`` of them at once, so one identity's hashing cannot occupy
them all: the others' transfers still get threads, and the loop (commands, shells) never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


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
