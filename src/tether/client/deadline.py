"""One deadline for making a connection: TCP connect, the TLS handshake and the server's welcome
together, for both drivers (the asyncio API and the blocking one-shot client).

Each read having its own timeout is not enough: a server (or a middlebox) that drips one byte
of its welcome every few seconds never lets a per-read timeout fire, and held ``tether run`` for
half an hour. So the driver asks :meth:`Deadline.left` before every wait and gives that wait no
more than what is left; when nothing is left, :meth:`Deadline.expired` is the error, naming the
host and the phase it was stuck in. Time spent asking the user whether to trust a new server
(:meth:`Deadline.paused`) is not counted: a person reading a fingerprint is not a slow server.

Light on purpose (the one-shot path imports it): no asyncio, no typing at run time.
"""

from __future__ import annotations

import contextlib
import time

from tether.errors import ConnectTimeout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

CONNECTING = "connecting"
TLS = "the TLS handshake"
WELCOME = "the server's welcome"


class Deadline:
    """When connecting to ``host`` must be done by, and what it is doing now (``phase``)."""

    __slots__ = ("end", "host", "phase", "port", "timeout")

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.end = time.monotonic() + timeout
        self.phase = CONNECTING

    def left(self) -> float:
        """Seconds left (more than zero); the :meth:`expired` error when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> ConnectTimeout:
        """The error for running out of time in the current phase."""
        return ConnectTimeout(f"{self.host} port {self.port}: no connection within "
                              f"{self.timeout:g} s (stuck in {self.phase}; "
                              f"--connect-timeout to wait longer)")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Around asking the user: the time it takes is added back."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.end += time.monotonic() - started


__all__ = ["CONNECTING", "TLS", "WELCOME", "Deadline"]
