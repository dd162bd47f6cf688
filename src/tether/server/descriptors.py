"""The descriptors clients' operations hold at once: a budget in total and per identity.

Each operation that keeps files, directories or pipes open while it waits for its peer (a put's
partial, a batch's directories and spool, a get's source, a listing's levels, a command's pipes)
takes its count here before it opens them and gives it back when it ends. Without this, one
put-only client with a few connections of stalled batches took every descriptor the process had,
and an honest ``tether run`` failed with "Too many open files". With it, such an operation is
refused with ``busy`` instead, and one identity can hold at most its share (and half of what
the others leave free), so the descriptors kept in reserve and room for others stay free.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from tether.errors import Busy
from tether.storage.durable import GROUP_DIRS, GROUP_FILES

log = logging.getLogger("tether.server")

LOG_INTERVAL = 10.0  # at most one log line per identity per this many seconds when a limit binds

# what each kind of operation may hold at once (upper bounds)
COSTS = {
    "exec": 4,  # stdin, stdout and stderr pipes, and the child's pidfd
    "shell": 4,  # a pty's master, or three pipes, and the pidfd
    "put": 2,  # the partial file and its directory
    # its base, at most 4 more directories, the spool of a file in pieces, and two durable
    # groups (files whole and verified, and their directories: one filling, one settling),
    # and the directories of the group before, whose names wait for the next syncfs
    "batch": 6 + 2 * (GROUP_FILES + GROUP_DIRS) + GROUP_DIRS,
    "get": 2,  # the source and its directory while it is found
    "fetch": 6,  # its base, at most 4 more directories and the file being read
    "list": 1,  # its top; each level it enters takes LIST_LEVEL more
    "connect": 1,  # the socket to its destination
    "listen": 1,  # the listening socket (connections waiting on it: MAX_PENDING, closed soon)
    # its root, the tree's cached directories (8), a file's partial, directory and old copy,
    # a file being read, two durable groups (one filling, one settling in the background) and
    # the directories of the one before (names waiting for the next syncfs), and the
    # directories of the batches queued for the store's thread (a few)
    "sync": 13 + 2 * (GROUP_FILES + GROUP_DIRS) + GROUP_DIRS + 16,
}
LIST_LEVEL = 2  # a directory of a listing and its scandir (which holds a duplicate)


class Descriptors:
    """A count of descriptors held by clients' operations, bounded in total and per identity."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = max(1, total)
        self.per_client = max(1, min(per_client, self.total))
        self.held = 0
        self.by_client: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def take(self, client: str, count: int) -> None:
        """Hold ``count`` more for ``client``, or raise :class:`Busy` saying which limit binds.

        Besides ``per_client``, an identity may hold at most half of what the others leave
        free: however many identities are greedy, the next one still finds room."""
        mine = self.by_client[client]
        fair = (self.total - (self.held - mine)) // 2
        if mine + count > self.per_client:
            self._binds(client, f"its {mine} descriptors are at the limit of "
                                f"{self.per_client} (serve --max-descriptors-per-client)")
        elif mine + count > fair:
            self._binds(client, f"its {mine} descriptors are half of what other clients leave "
                                f"free of {self.total} (serve --reserved-descriptors, "
                                f"RLIMIT_NOFILE)")
        self.by_client[client] = mine + count
        self.held += count

    def give(self, client: str, count: int) -> None:
        if count <= 0:
            return
        self.held -= count
        self.by_client[client] -= count
        if self.by_client[client] <= 0:
            del self.by_client[client]

    def _binds(self, client: str, why: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(client, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[client] = now
            if len(self._logged) > 1024:  # bounded: forget the oldest
                del self._logged[next(iter(self._logged))]
            log.warning("descriptor limit binds for %s: %s", client, why)
        raise Busy(f"the server cannot open more files for this client now: {why}; "
                   f"try again when its other operations end")


class Holder:
    """One session's holdings, by stream, so that ending a stream gives back exactly what it
    took (whichever way it ends)."""

    def __init__(self, budget: Descriptors | None, client: str) -> None:
        self.budget = budget
        self.client = client
        self.by_stream: Counter[int] = Counter()

    def take(self, stream: int, count: int) -> None:
        if self.budget is not None and count:
            self.budget.take(self.client, count)
            self.by_stream[stream] += count

    def give(self, stream: int, count: int | None = None) -> None:
        """Give back ``count`` of what ``stream`` holds (all of it by default)."""
        held = self.by_stream.get(stream, 0)
        count = held if count is None else min(count, held)
        if self.budget is None or not count:
            return
        self.budget.give(self.client, count)
        if held - count:
            self.by_stream[stream] = held - count
        else:
            del self.by_stream[stream]

    def give_all(self) -> None:
        for stream in list(self.by_stream):
            self.give(stream)

    def for_stream(self, stream: int) -> Callable[[int], None]:
        """What a listing tells of the descriptors its levels take (+) and give back (-)."""
        def hold(count: int) -> None:
            if count > 0:
                self.take(stream, count)
            else:
                self.give(stream, -count)
        return hold
