"""Refusals of unauthenticated connections, logged and audited once per address per interval.

A peer that is not authorized (or fails its handshake, or meets a full server) can connect as
fast as the network allows; a log and audit line per attempt let one address write megabytes a
second. The first refusal of an address in an interval is written at once; the others are
counted and written as one summary line (``count``) when the interval ends. Addresses tracked at
once are capped, past that they share one bucket, so the bookkeeping is bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from tether.server.audit import AuditLog

log = logging.getLogger("tether.server")

MAX_TRACKED = 4096  # addresses with a pending summary; past this they share "*"


@dataclass
class _Pending:
    reason: str
    presented: dict[str, str] = field(default_factory=dict)  # the certificate's fingerprint
    count: int = 0
    since: float = field(default_factory=time.monotonic)


class Refusals:
    """Writes ``refused`` lines for ``audit`` and the log, aggregated per address."""

    def __init__(self, audit: AuditLog, interval: float) -> None:
        self.audit = audit
        self.interval = interval
        self._pending: dict[str, _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, address: str, reason: str, presented: dict[str, str] | None = None) -> None:
        """One refusal of ``address`` (``presented``: the fingerprint of the certificate it
        showed, if any): written now if it is the first in its interval."""
        presented = presented or {}
        if self.interval <= 0:
            self._write(address, reason, 1, presented)
            return
        key = address if address in self._pending or len(self._pending) < MAX_TRACKED else "*"
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(reason, presented)
            self._write(address, reason, 1, presented)
            self._arm()
        else:
            pending.count += 1
            pending.reason, pending.presented = reason, presented

    def _arm(self) -> None:
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        """Write the summaries of intervals that ended; forget quiet addresses."""
        self._timer = None
        now = time.monotonic()
        for address, pending in list(self._pending.items()):
            if now - pending.since < self.interval:
                continue
            del self._pending[address]
            if pending.count:
                self._write(address, pending.reason, pending.count, pending.presented,
                            summary=True)
                # the next refusal starts a fresh interval (written at once)
        if self._pending:
            self._arm()

    def flush(self) -> None:
        """Write every pending summary (the server is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for address, pending in self._pending.items():
            if pending.count:
                self._write(address, pending.reason, pending.count, pending.presented,
                            summary=True)
        self._pending.clear()

    def _write(self, address: str, reason: str, count: int, presented: dict[str, str],
               summary: bool = False) -> None:
        if summary:
            log.warning("refused %s %d more times in %.0f s (last: %s)", address, count,
                        self.interval, reason)
            self.audit.event("refused", address=address, reason=reason, count=count,
                             interval=self.interval, **presented)
        else:
            log.warning("refused %s: %s", address, reason)
            self.audit.event("refused", address=address, reason=reason, **presented)
