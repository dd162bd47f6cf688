"""Uploads that make no progress are ended: a put or batch holds a partial, a spool and directory
descriptors, and a client may open many and then send nothing (``serve --stall-timeout``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StallWatch:
    """When each watched stream last received data; ``on_stall(stream)`` once one has received
    none for ``timeout`` seconds (it decides whether the stream still waits for data)."""

    def __init__(self, timeout: float, on_stall: Callable[[int], None]) -> None:
        self.timeout = timeout
        self.on_stall = on_stall
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._heard: dict[int, float] = {}

    def watch(self, stream: int) -> None:
        if self.timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self._heard[stream] = loop.time()
        self._timers[stream] = loop.call_later(self.timeout, self._check, stream)

    def heard(self, stream: int) -> None:
        if stream in self._heard:
            self._heard[stream] = asyncio.get_running_loop().time()

    def _check(self, stream: int) -> None:
        self._timers.pop(stream, None)
        if stream not in self._heard:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._heard[stream]
        if idle < self.timeout:
            self._timers[stream] = loop.call_later(self.timeout - idle, self._check, stream)
            return
        del self._heard[stream]
        self.on_stall(stream)

    def unwatch(self, stream: int) -> None:
        timer = self._timers.pop(stream, None)
        if timer is not None:
            timer.cancel()
        self._heard.pop(stream, None)

    def clear(self) -> None:
        for stream in list(self._timers):
            self.unwatch(stream)
