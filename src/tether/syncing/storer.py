"""A sync destination's small files, stored on a worker thread while the event loop goes on
receiving: writing ten thousand files is as much work as decrypting them, and the two then run
on two cores. One thread, so files are written and groups flushed in the order they arrived; a
budget of queued bytes, so a fast sender cannot fill memory; the first failure (a full disk)
is raised to the side at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from tether.storage.durable import DurableGroup

QUEUED_BYTES = 32 * 1024 * 1024  # reference policy: content waiting for the worker

# (directory fd, name, content, mode, mtime in ns) of one file to store
File = tuple[int, str, "bytes | bytearray | memoryview", int, int]


class Storer:
    """Hands each verified small file to a :class:`DurableGroup` on one worker thread."""

    def __init__(self, group: DurableGroup | None = None, budget: int = QUEUED_BYTES) -> None:
        self.group = group or DurableGroup(background=True)  # settled while more are written
        self.budget = budget
        self.queued = 0
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: deque[tuple[Future[None], int, list[int]]] = deque()  # job, bytes, dir fds

    def add(self, files: list[File], fds: list[int]) -> None:
        """Queue files, one job for all of them (a batch's worth). ``fds`` are the directory
        fds they name, the Storer's from now on (closed once the files are written)."""
        try:
            self._reap()
        except BaseException:
            _close(fds)
            raise
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tether-sync-store")
        size = sum(len(data) for _, _, data, _, _ in files)
        self._jobs.append((self._pool.submit(self._store, files, fds), size, fds))
        self.queued += size

    def _store(self, files: list[File], fds: list[int]) -> None:
        try:
            for dir_fd, name, data, mode, mtime_ns in files:
                self.group.add(dir_fd, name, data, mode, mtime_ns)  # settled a group at a time
        finally:
            _close(fds)

    def _reap(self) -> None:
        """Forget finished jobs; raise the first one's failure."""
        while self._jobs and self._jobs[0][0].done():
            job, size, _ = self._jobs.popleft()
            self.queued -= size
            job.result()

    async def room(self) -> None:
        """Wait while more than the budget is queued (the sender waits with it: its window)."""
        while self.queued > self.budget and self._jobs:
            await asyncio.wrap_future(self._jobs[0][0])
            self._reap()

    async def finish(self) -> None:
        """Wait for every queued file, then until every group is durable and in place."""
        while self._jobs:
            await asyncio.wrap_future(self._jobs[0][0])
            self._reap()
        if self._pool is not None:
            await asyncio.wrap_future(self._pool.submit(self.group.wait))
        else:
            self.group.wait()

    def close(self) -> None:
        """Stop: queued files not yet written are dropped, and so are the group's files not
        yet settled (unnamed: nothing of them is kept); a group being settled is finished."""
        for job, _, fds in self._jobs:
            if job.cancel():  # never started: its fds are still open
                _close(fds)
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with contextlib.suppress(OSError):
            self.group.close()


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
