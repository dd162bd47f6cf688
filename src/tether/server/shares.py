"""Fair shares per client identity of something the server has little of, across all of that
identity's connections: a fetch holds up to two batches' bytes (its files read whole, then
joined) while its reader lags, and an identity with many connections could otherwise hold
that many times over (``serve --max-fetches-per-client``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Shares:
    """At most ``per_client`` holders at once per identity; the others wait their turn."""

    def __init__(self, per_client: int) -> None:
        self.per_client = max(1, per_client)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, client: str) -> AsyncIterator[None]:
        slots = self._slots.get(client)
        if slots is None:
            slots = self._slots[client] = asyncio.Semaphore(self.per_client)
        self._users[client] = self._users.get(client, 0) + 1
        try:
            async with slots:
                yield
        finally:
            self._users[client] -= 1
            if not self._users[client]:  # nobody holds or waits: forget it (bounded state)
                del self._users[client]
                del self._slots[client]
