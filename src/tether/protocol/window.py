"""Receive windows that tune themselves to the path: how much credit the reference receiver
grants (docs/PROTOCOL.md, "Flow control" and "Window tuning").

The wire only says that a sender stays within the credit it was granted; how much to grant is
the receiver's choice. A fixed window of W bytes caps a stream at W ÷ RTT (4 MiB at 50 ms: 80
MiB/s), so the receiver measures the path instead, as gRPC's BDP ping does:

- With a ``credit`` on a stream that has carried a whole initial window (a bulk stream), it
  sends a window probe: a ``ping`` with a token of its own (at most one probe out at a time per
  connection). Every peer answers a ping with a ``pong``.
- What arrives on each stream between the probe and its answer is what the path held in one
  round trip: the bandwidth-delay product the stream used (``sample``).
- When the answer comes, a stream whose sender was window-limited (the round trip carried two
  thirds of the window or more) while its consumer kept up (a quarter of the window or less
  waits unconsumed) doubles its window (or grows it to twice the sample, if that is more), as
  far as the connection's budget allows; other windows stay.
- ...but only up to twice the path's bandwidth-delay product, as measured: the sample over the
  probe's round trip is the bandwidth the stream got (the best one so far counts, as gRPC's
  BDP estimator keeps its maximum), and the shortest round trip any probe of the connection
  took is the path's own, without queues. Where a queue sits on the path (a router's buffer, a
  proxy's, the sockets' own), the answer to a probe waits behind what the window put in it, so
  every window looks "filled in one round trip"; counting bytes alone would grow it to the
  budget. On loopback the shortest round trip is a fraction of a millisecond: windows stay
  at ``INITIAL_WINDOW``, or one step above it.
- Whenever the consumer has fallen behind (half the window or more received and not consumed),
  the window halves, down to ``INITIAL_WINDOW``: credit already granted cannot be taken back,
  so the next grants wait until what is held and in flight fits the smaller window.

- The windows of a connection's streams add up to at most ``budget`` bytes (each stream starts
  at ``INITIAL_WINDOW``, which the protocol fixes, and only growth is refused beyond the budget):
  what a connection can make its receiver hold is the budget, however the streams are used.

Credit is granted as the application consumes, once a quarter of the window is due, so a window
of W keeps between 3/4 W and W in flight. The clock is the Connection's (``time.monotonic``
unless told otherwise; the tests' is simulated, so they replay the policy exactly).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: every `tether run` would pay for it
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Final

INITIAL_WINDOW: Final = 4 * 1024 * 1024  # DATA bytes a new stream may carry before any credit
MAX_CREDIT: Final = 1 << 31  # the largest window a sender may hold (the wire's limit)
WINDOW_BUDGET: Final = 64 * 1024 * 1024  # reference receiver: what a connection's windows total
PROBE_TOKENS: Final = 1 << 40  # window probes' ping tokens count from here (keepalives from 1)


class Window:
    """One stream's receive side: the window it is tuned to, and the bytes in its account."""

    __slots__ = ("basis", "best", "counted", "held", "open", "sample", "size", "total")

    def __init__(self) -> None:
        self.size = INITIAL_WINDOW  # what we want the peer to be able to have sent, unconsumed
        self.open = INITIAL_WINDOW  # what the peer may still send: granted minus received
        self.held = 0  # received and not yet consumed by the application
        self.sample = 0  # received since the window probe went out
        self.total = 0  # received in all
        self.basis = INITIAL_WINDOW  # the window before the last growth (see Tuner._tune)
        self.counted = False  # part of the connection's total
        self.best = 0.0  # the highest bandwidth (bytes/s) a probe measured since the last shrink

    def received(self, size: int) -> None:
        self.open -= size
        self.held += size
        self.sample += size
        self.total += size

    def consumed(self, size: int) -> None:
        self.held -= size

    @property
    def bulk(self) -> bool:
        """Whether the stream has carried a whole initial window: only then is the path worth
        measuring (a command's few lines of output never cost a probe)."""
        return self.total >= INITIAL_WINDOW

    def due(self) -> int:
        """Credit to grant now: what restores the window, once it is a quarter of it."""
        due = self.size - self.open - self.held
        return due if due > 0 and due >= self.size // 4 else 0


class Tuner:
    """A connection's window probe and its streams' windows, within ``budget`` bytes."""

    def __init__(self, budget: int, clock: Callable[[], float]) -> None:
        self.budget = min(budget, MAX_CREDIT)
        self.clock = clock
        self.sent = 0.0  # when the probe out went
        self.shortest = float("inf")  # the shortest round trip a probe took (seconds)
        self.total = 0  # the windows of the streams still receiving, added up
        self.token: int | None = None  # the probe out, if any
        self._next = PROBE_TOKENS

    @property
    def enabled(self) -> bool:
        return self.budget > INITIAL_WINDOW

    def opened(self, window: Window) -> None:
        window.counted = True
        self.total += window.size

    def closed(self, window: Window) -> None:
        """The stream receives no more: its window no longer counts against the budget."""
        if window.counted:
            window.counted = False
            self.total -= window.size

    def probe(self, windows: Iterable[Window]) -> int | None:
        """The token of a new window probe to send, or None (tuning off, or one is out)."""
        if not self.enabled or self.token is not None:
            return None
        self._next += 1
        self.token = self._next
        self.sent = self.clock()
        for window in windows:
            window.sample = 0
        return self.token

    def answered(self, token: int, windows: Iterable[Window]) -> bool:
        """A pong arrived: if it answers our probe, tune every window and return True."""
        if self.token is None or token != self.token:
            return False
        self.token = None
        rtt = max(self.clock() - self.sent, 1e-6)
        self.shortest = min(self.shortest, rtt)
        for window in windows:
            self._tune(window, rtt)
        return True

    def _tune(self, window: Window, rtt: float) -> None:
        """Grow a window whose sender was window-limited while its consumer kept up, while it
        is under twice the path's product: the best bandwidth (this round trip's, ``rtt``
        seconds, or an earlier one's) times the shortest round trip.

        The yardstick is the window in force during the round trip just measured: the one
        before the last growth (a sender learns of a larger window only half a round trip
        later, so the first round after a growth still carries the old one).
        """
        sample, window.sample = window.sample, 0
        size = window.size
        basis, window.basis = min(window.basis, size), size
        if sample * 3 < basis * 2 or window.held * 4 > size:
            return  # not window-limited, or the consumer is behind: growing would not help
        window.best = max(window.best, sample / rtt)
        if size >= 2 * window.best * self.shortest:
            return  # the window already covers the path twice over: more would only queue
        new = max(size, min(2 * max(sample, size), size + self.budget - self.total))
        self.total += new - size
        window.size = new

    def relieve(self, window: Window) -> None:
        """The consumer fell behind (half the window or more waits unconsumed): halve the
        window, down to ``INITIAL_WINDOW``. Credit already granted stays granted; the next
        grants wait until what is held and in flight fits the smaller window."""
        size = window.size
        if size > INITIAL_WINDOW and window.held * 2 >= size:
            new = max(INITIAL_WINDOW, size // 2)
            self.total -= size - new
            window.size = window.basis = new
            window.best = 0.0  # measured with a consumer that kept up: start over
