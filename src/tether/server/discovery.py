"""Answering discovery probes over UDP (``tether serve --discoverable``), on the TLS port's number.

A UDP source address is unverified, so a reply may land on someone who never asked: the
datagram rules (``tether.protocol.discovery``) keep every reply no larger than its probe, and
this module keeps the rate low — a token bucket per source address (LRU-capped so spoofed
sources cannot grow memory) and one for the whole server. What is dropped is counted by reason
(``malformed``, ``oversized``, ``rate_limited``) and logged as counts, at most once a minute,
never one line per datagram.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import cast

from tether.protocol.discovery import Announcement, DatagramError, decode_probe, encode_reply

log = logging.getLogger("tether.server.discovery")

LOG_INTERVAL = 60.0
ANSWERED, RATE_LIMITED = "answered", "rate_limited"


@dataclass
class Bucket:
    """A token bucket: ``burst`` at once, refilled at ``rate`` per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimit:
    """Per-source buckets (the ``max_sources`` most recent) under one global bucket."""

    def __init__(self, rate: float = 5.0, burst: float = 10.0, total_rate: float = 500.0,
                 max_sources: int = 4096) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self.sources: OrderedDict[str, Bucket] = OrderedDict()
        now = time.monotonic()
        self.total = Bucket(total_rate, total_rate, total_rate, now)

    def allow(self, source: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self.sources.get(source)
        if bucket is None:
            bucket = Bucket(self.rate, self.burst, self.burst, now)
            self.sources[source] = bucket
            if len(self.sources) > self.max_sources:
                self.sources.popitem(last=False)
        else:
            self.sources.move_to_end(source)
        return bucket.take(now) and self.total.take(now)


class DiscoveryResponder(asyncio.DatagramProtocol):
    """The UDP side of a discoverable server: valid probes in, small replies out."""

    def __init__(self, announcement: Announcement, limit: RateLimit | None = None) -> None:
        self.announcement = announcement
        self.limit = limit or RateLimit()
        self.counts: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None
        self._logged: Counter[str] = Counter()
        self._logged_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            nonce = decode_probe(data)
        except DatagramError as exc:
            self._dropped(exc.reason)
            return
        if not self.limit.allow(str(addr[0])):
            self._dropped(RATE_LIMITED)
            return
        reply = encode_reply(nonce, self.announcement, len(data))
        if self.transport is not None:
            self.transport.sendto(reply, addr)
            self.counts[ANSWERED] += 1

    def error_received(self, exc: Exception) -> None:
        log.debug("discovery socket error: %s", exc)  # ICMP echoes of our replies; harmless

    def _dropped(self, reason: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            self.log_counts()
            self._logged_at = now

    def log_counts(self) -> None:
        """One line with what was dropped since the last such line, if anything was."""
        new = {k: v - self._logged[k] for k, v in self.counts.items()
               if k != ANSWERED and v > self._logged[k]}
        if new:
            dropped = ", ".join(f"{n} {reason.replace('_', '-')}" for reason, n in sorted(
                new.items()))
            log.warning("discovery: dropped %s datagrams (%d answered in all)", dropped,
                        self.counts[ANSWERED])
            self._logged = Counter(self.counts)

    def close(self) -> None:
        self.log_counts()
        if self.transport is not None:
            self.transport.close()


async def start_discovery(host: str, port: int, announcement: Announcement
                          ) -> DiscoveryResponder:
    """Bind the UDP socket on ``host``:``port`` and answer probes there until closed."""
    loop = asyncio.get_running_loop()
    _transport, responder = await loop.create_datagram_endpoint(
        lambda: DiscoveryResponder(announcement), local_addr=(host, port)
    )
    return responder
