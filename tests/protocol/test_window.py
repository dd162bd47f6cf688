"""Window tuning (tether.protocol.window, docs/PROTOCOL.md "Window tuning"), sans-I/O.

A client and a server Connection exchange real frames over a simulated path: each direction holds
its bytes for half the round trip, the sender puts at most ``rate`` bytes per millisecond on it,
and the server's application consumes what arrived at its own pace. No sockets and no clock: a
loop of one-millisecond ticks. Each side writes what its core queued (``data_to_send()``: the
server's credit and window probes, the client's pongs), as the drivers do.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import pytest
from protocol_helpers import Pair, events_from, handshaken_pair, wire

from tether.protocol import (
    INITIAL_WINDOW,
    MAX_BODY,
    WINDOW_BUDGET,
    Close,
    Credit,
    Data,
    Exec,
    Exit,
    Message,
    Ping,
    Pong,
    Started,
)
from tether.protocol.connection import NEED_DATA, Connection
from tether.protocol.decode import decode_message
from tether.protocol.frames import FrameDecoder

MiB = 1024 * 1024
CHUNK = bytes(MAX_BODY // 4)  # 256 KiB frames


@dataclass
class Link:
    """One direction of the path: bytes become visible ``delay`` ticks after they were sent."""

    delay: int
    rate: int = 0  # bytes per tick the link carries (0: any); what it cannot carry waits in line
    queue: collections.deque[tuple[int, bytes]] = field(default_factory=collections.deque)
    allowance: int = 0

    def put(self, now: int, data: bytes) -> None:
        if data:
            self.queue.append((now + self.delay, data))

    def take(self, now: int) -> bytes:
        out = bytearray()
        self.allowance = min(self.allowance + self.rate, self.rate + len(CHUNK))
        while self.queue and self.queue[0][0] <= now:
            if self.rate and len(self.queue[0][1]) > self.allowance:
                break  # the bottleneck: a queue builds up in front of it
            data = self.queue.popleft()[1]
            self.allowance -= len(data)
            out += data
        return bytes(out)

    def deliver(self, now: int, to: Connection) -> None:
        data = self.take(now)
        if data:  # b"" would be the end of the byte stream
            to.receive_data(data)


@dataclass
class Path:
    """A client sending one stream to a server over a path of ``rtt`` ms; the server consumes
    ``consume(now)`` bytes per tick (its application's pace)."""

    rtt: int
    rate: int  # bytes per tick the sender can put on the path
    bottleneck: int = 0  # bytes per tick the path carries, with a queue before it (0: rate)
    budget: int = WINDOW_BUDGET
    streams: tuple[int, ...] = (1,)
    client: Connection = field(init=False)
    server: Connection = field(init=False)
    now: int = 0
    allowance: int = 0
    held_peak: int = 0
    delivered: collections.Counter[int] = field(default_factory=collections.Counter)
    unread: collections.Counter[int] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        pair = handshaken_pair(window_budget=self.budget, clock=lambda: self.now / 1000)
        for stream in self.streams:
            pair.client_sends(Exec(argv=["cat"], stream=stream))
            pair.server_sends(Started(pid=1, stream=stream))  # the command runs: stdin credit
        self.client, self.server = pair.client, pair.server
        self.up, self.down = Link(self.rtt // 2, self.bottleneck), Link(self.rtt // 2)

    def tick(self, consume: int) -> None:
        """One millisecond: deliver, consume, answer, send."""
        self.now += 1
        self._server_reads()
        for stream in self.streams:
            take = min(consume, self.unread[stream])
            if take:
                self.unread[stream] -= take
                self.delivered[stream] += take
                self.server.consumed(stream, take)
        self.down.put(self.now, self.server.data_to_send())  # credit, and a probe riding on it
        self.held_peak = max(self.held_peak, self.server.held)
        self._client_reads()
        self._client_sends()

    def _server_reads(self) -> None:
        self.up.deliver(self.now, self.server)
        while (event := self.server.next_event()) is not NEED_DATA:
            assert isinstance(event, Data), event  # the probe's answer never surfaces
            self.unread[event.stream] += len(event.data)
        assert not self.server.data_to_send()  # nothing to answer: the client never pings

    def _client_reads(self) -> None:
        self.down.deliver(self.now, self.client)
        while (event := self.client.next_event()) is not NEED_DATA:
            assert isinstance(event, Credit), event  # the probe is answered by the core
        self.up.put(self.now, self.client.data_to_send())  # the pong

    def _client_sends(self) -> None:
        """The path takes ``rate`` bytes per tick: what it could not take waits for the next."""
        self.allowance = min(self.allowance + self.rate, self.rate + len(CHUNK))
        for stream in self.streams:
            while self.allowance >= len(CHUNK) and self.client.send_window(stream) >= len(CHUNK):
                self.up.put(self.now, self.client.send_data(stream, 0, CHUNK))
                self.allowance -= len(CHUNK)

    def run(self, ticks: int, consume: int) -> int:
        """``ticks`` ms at a consumer pace of ``consume`` bytes per ms; returns bytes consumed."""
        before = sum(self.delivered.values())
        for _ in range(ticks):
            self.tick(consume)
        return sum(self.delivered.values()) - before


FAST = 10**9  # a consumer that keeps up with anything


def test_a_fast_consumer_grows_the_window_to_the_path_and_fills_it() -> None:
    # 200 MiB/s over 100 ms: 20 MiB in flight, five times the initial window
    path = Path(rtt=100, rate=200 * MiB // 1000)
    path.run(1500, FAST)
    assert 20 * MiB <= path.server.window(1) <= WINDOW_BUDGET
    assert path.client.send_window(1) <= path.server.window(1)  # the grants follow the window
    moved = path.run(1000, FAST)  # a second at the tuned window: (nearly) the path's rate
    assert moved >= 0.9 * 200 * MiB
    assert path.held_peak <= WINDOW_BUDGET


def test_a_queue_on_the_path_does_not_inflate_the_window() -> None:
    """The sender could go at 1 GiB/s, but the path carries 100 MiB/s and queues the rest (a
    router's buffer, or the latency proxy's): a probe's answer then waits behind whatever the
    window put in that queue, and a byte count alone would read every window as "filled in one
    round trip" and grow it to the budget. The bandwidth the probes measure stops growing once
    the window covers the path's product (5 MiB here), and so does the window."""
    path = Path(rtt=50, rate=1024 * MiB // 1000, bottleneck=100 * MiB // 1000)
    path.run(1500, FAST)
    assert INITIAL_WINDOW < path.server.window(1) <= 16 * MiB
    moved = path.run(1000, FAST)
    assert moved >= 0.9 * 100 * MiB  # and the path stays full


def test_an_untuned_window_caps_the_same_path_at_window_per_round_trip() -> None:
    path = Path(rtt=100, rate=200 * MiB // 1000, budget=INITIAL_WINDOW)
    path.run(500, FAST)
    moved = path.run(1000, FAST)
    assert path.server.window(1) == INITIAL_WINDOW
    assert moved <= 10 * INITIAL_WINDOW + INITIAL_WINDOW  # 4 MiB per 100 ms round trip


def test_growth_stops_at_the_connection_budget() -> None:
    # 1 GiB/s over 150 ms: 150 MiB in flight, more than the 32 MiB budget
    path = Path(rtt=150, rate=1024 * MiB // 1000, budget=32 * MiB)
    path.run(1500, FAST)
    assert path.server.window(1) == 32 * MiB
    assert path.held_peak <= 32 * MiB


def test_streams_share_the_budget() -> None:
    path = Path(rtt=100, rate=600 * MiB // 1000, budget=24 * MiB, streams=(1, 3))
    path.run(1500, FAST)
    windows = path.server.window(1) + path.server.window(3)
    assert windows <= 24 * MiB
    assert min(path.server.window(1), path.server.window(3)) > INITIAL_WINDOW  # both grew


def test_a_slow_consumer_never_grows_the_window_and_memory_stays_within_it() -> None:
    # the path could carry 200 MiB/s, the application takes 20 MiB/s
    path = Path(rtt=100, rate=200 * MiB // 1000)
    moved = path.run(2000, 20 * MiB // 1000)
    assert path.server.window(1) == INITIAL_WINDOW
    assert path.held_peak <= INITIAL_WINDOW
    assert moved >= 0.95 * 2 * 20 * MiB  # the consumer, not the window, sets the pace


def test_a_consumer_that_falls_behind_shrinks_the_window_back() -> None:
    path = Path(rtt=150, rate=1024 * MiB // 1000)
    path.run(1500, FAST)
    assert path.server.window(1) == WINDOW_BUDGET  # grown to the budget
    path.run(2000, 10 * MiB // 1000)  # now the application takes 10 MiB/s
    assert path.server.window(1) == INITIAL_WINDOW
    assert path.held_peak <= WINDOW_BUDGET  # memory at the budget throughout
    # once the old grants are consumed, what waits unconsumed fits the shrunk window
    path.run(6000, 10 * MiB // 1000)
    assert path.server.held <= INITIAL_WINDOW


def test_the_window_grows_again_when_the_consumer_catches_up() -> None:
    path = Path(rtt=100, rate=400 * MiB // 1000)
    path.run(2000, 10 * MiB // 1000)
    assert path.server.window(1) == INITIAL_WINDOW
    path.run(1500, FAST)
    assert path.server.window(1) > 4 * INITIAL_WINDOW


@pytest.mark.parametrize(("rtt", "bottleneck"), [(0, 0), (2, 0), (0, 100), (2, 100)])
def test_a_short_path_needs_no_growth(rtt: int, bottleneck: int) -> None:
    # loopback-like: the path's product is far below the initial window, even when the sender
    # outruns the path and a queue (the sockets' buffers) makes the probes' answers wait
    path = Path(rtt=rtt, rate=100 * MiB // 1000 * (10 if bottleneck else 1),
                bottleneck=bottleneck * MiB // 1000)
    moved = path.run(1000, FAST)
    # a standing queue hides the path's own round trip from every probe: one step of growth,
    # then the bandwidth it measures stops growing and so does the window
    assert path.server.window(1) <= (2 if bottleneck else 1) * INITIAL_WINDOW
    assert moved >= 0.95 * 100 * MiB


def _messages(raw: bytes) -> list[Message]:
    """The messages in ``raw``, decoded as a peer would see them on the wire."""
    decoder = FrameDecoder()
    decoder.feed(raw)
    out = []
    while (frame := decoder.next_frame()) is not None:
        assert frame.header is not None
        out.append(decode_message(frame.header, frame.stream))
    return out


def _bulk_stream(**options: Any) -> Pair:
    """A pair whose server has received (not consumed) one whole initial window of stdin."""
    pair = handshaken_pair(**options)
    pair.open_exec()
    for _ in range(INITIAL_WINDOW // MAX_BODY):
        pair.client_data(1, 0, bytes(MAX_BODY))
    return pair


def test_one_probe_at_a_time_and_none_without_an_answer() -> None:
    """A peer that never answers pings (it must, but) only keeps the window where it was."""
    pair = _bulk_stream()
    sent: list[Message] = []

    def consume(size: int) -> None:
        pair.server.consumed(1, size)
        raw = pair.server.data_to_send()
        sent.extend(_messages(raw))
        pair.to_client(raw)
        pair.client.data_to_send()  # the pong is lost on the way

    consume(INITIAL_WINDOW)
    for _ in range(8):  # eight more windows' worth, each consumed at once
        for _ in range(INITIAL_WINDOW // MAX_BODY):
            pair.client_data(1, 0, bytes(MAX_BODY))
            consume(MAX_BODY)
    assert sum(isinstance(m, Ping) for m in sent) == 1
    assert sum(m.size for m in sent if isinstance(m, Credit)) == 9 * INITIAL_WINDOW
    assert pair.server.window(1) == INITIAL_WINDOW


def test_the_probe_rides_on_the_credit_and_its_answer_is_absorbed() -> None:
    pair = _bulk_stream()
    pair.server.consumed(1, INITIAL_WINDOW)
    credit, ping = _messages(pair.server.data_to_send())
    assert credit == Credit(size=INITIAL_WINDOW, stream=1)
    assert isinstance(ping, Ping) and ping.token > 1 << 40  # not a keepalive's token
    pair.server.receive_data(wire(Pong(token=ping.token + 1)))  # not ours: ignored
    assert pair.server.next_event() is NEED_DATA and pair.server._tuner.token == ping.token
    # the client's core answers the probe itself, and the server's absorbs the answer
    assert pair.to_client(wire(credit) + wire(ping)) == [credit]
    assert events_from(pair.server, pair.client.data_to_send()) == []
    assert pair.server._tuner.token is None


def test_a_short_stream_costs_no_probe() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    for _ in range(INITIAL_WINDOW // MAX_BODY - 1):  # just short of a whole window
        pair.client_data(1, 0, bytes(MAX_BODY))
        pair.server.consumed(1, MAX_BODY)
        assert not any(isinstance(m, Ping) for m in _messages(pair.server.data_to_send()))
    assert pair.server.window(1) == INITIAL_WINDOW


def test_tuning_off_below_the_initial_window() -> None:
    pair = _bulk_stream(window_budget=0)
    pair.server.consumed(1, INITIAL_WINDOW)
    assert _messages(pair.server.data_to_send()) == [Credit(size=INITIAL_WINDOW, stream=1)]


def test_a_closed_stream_returns_its_window_to_the_budget() -> None:
    path = Path(rtt=100, rate=400 * MiB // 1000, budget=16 * MiB)
    path.run(1500, FAST)
    assert path.server.window(1) == 16 * MiB
    path.server.send(Exit(status=0, stream=1))
    path.client.send(Close(stream=1))
    assert path.server.window(1) == 0
    assert path.server._tuner.total == 0
