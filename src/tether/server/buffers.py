"""A byte budget per client identity over all of its connections (``serve
--max-buffered-per-client``): what its connections hold in memory — frames received and not yet
handled, replies written and not yet sent, a command's stdin the command has not read yet, a
batch's bytes waiting for the disk — together.

Each connection alone is bounded (its receive queue by the core's high-water mark, its streams
by their flow-control window), but an identity may open hundreds of connections with 64
streams each: a command that never reads stdin lets its client queue a 4 MiB window per stream
in the server, 256 MiB per connection. Over the budget, every connection of the identity stops
reading (nothing more arrives to be held) until what they hold falls to three quarters of it;
each time a log line says so, at most once per 10 s per identity. Other identities are not
touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from tether.net.framed import FramedProtocol

log = logging.getLogger("tether.server")

LOG_INTERVAL = 10.0  # at most one log line per identity per this many seconds
RECHECK = 0.25  # how often a paused identity's holdings are measured again (sent replies drain
#                 without telling anyone)


class Meter:
    """One connection's holdings: its link's buffers and what its streams hold (``extra``)."""

    def __init__(self, budget: ByteBudget, client: str, link: FramedProtocol,
                 extra: Callable[[], int]) -> None:
        self.budget = budget
        self.client = client
        self.link = link
        self.extra = extra
        self.counted = 0

    def update(self) -> None:
        """Measure again and let the budget decide whether the identity reads on."""
        self.budget.update(self)

    def measure(self) -> int:
        now = self.link.held + self.extra()
        delta, self.counted = now - self.counted, now
        return delta

    def leave(self) -> None:
        self.budget.leave(self)


class ByteBudget:
    """Bytes held per identity, and which identities are told to stop reading."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client  # 0: no budget
        self.held: dict[str, int] = {}
        self.meters: dict[str, set[Meter]] = {}
        self.paused: set[str] = set()
        self._logged: dict[str, float] = {}

    def join(self, client: str, link: FramedProtocol, extra: Callable[[], int]) -> Meter:
        """Count a connection of ``client`` (which stops reading at once if the identity is
        over its budget); the link tells its meter when its buffers change."""
        meter = Meter(self, client, link, extra)
        self.meters.setdefault(client, set()).add(meter)
        link.watcher = meter.update
        if client in self.paused:
            link.hold_off(True)
        meter.update()
        return meter

    def add(self, client: str, delta: int) -> int:
        """Count ``delta`` more bytes for ``client``; what the identity holds now (a
        privilege-separated worker keeps this in a counter all workers share)."""
        held = self.held[client] = self.held.get(client, 0) + delta
        return held

    def leave(self, meter: Meter) -> None:
        meter.link.watcher = None  # (its connection is ending: no need to read again)
        client = meter.client
        meters = self.meters.get(client)
        if meters is None or meter not in meters:
            return
        meters.discard(meter)
        self.add(client, -meter.counted)
        if not meters:
            del self.meters[client]
            self.held.pop(client, None)
            self.paused.discard(client)

    def update(self, meter: Meter) -> None:
        if meter not in self.meters.get(meter.client, ()):
            return
        client = meter.client
        if not self.per_client:  # no budget (or none since a reload): nobody waits
            if client in self.paused:
                self._resume(client)
            return
        held = self.add(client, meter.measure())
        if client not in self.paused and held > self.per_client:
            self._pause(client, held)
        elif client in self.paused and held <= self.per_client * 3 // 4:
            self._resume(client)

    def _pause(self, client: str, held: int) -> None:
        self.paused.add(client)
        for meter in self.meters[client]:
            meter.link.hold_off(True)
        now = time.monotonic()
        if now - self._logged.get(client, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[client] = now
            if len(self._logged) > 1024:  # bounded: forget the oldest
                del self._logged[next(iter(self._logged))]
            log.warning("byte budget binds for %s: its %d connections hold %d bytes (limit %d, "
                        "serve --max-buffered-per-client); they stop reading until it drains",
                        client, len(self.meters[client]), held, self.per_client)
        asyncio.get_running_loop().call_later(RECHECK, self._recheck, client)

    def _resume(self, client: str) -> None:
        self.paused.discard(client)
        for meter in self.meters.get(client, ()):
            meter.link.hold_off(False)

    def _recheck(self, client: str) -> None:
        """Measure every connection of a paused identity again (replies sent and stdin read
        lower what it holds without each telling its meter)."""
        if client not in self.paused:
            return
        meters = self.meters.get(client, set())
        held = self.add(client, sum(m.measure() for m in meters))
        if not self.per_client or held <= self.per_client * 3 // 4:
            self._resume(client)
        else:
            asyncio.get_running_loop().call_later(RECHECK, self._recheck, client)
