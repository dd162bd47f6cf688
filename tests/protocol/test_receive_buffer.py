"""Receiving without a copy: ``get_buffer`` / ``buffer_updated``, as ``recv_into`` and asyncio's
``BufferedProtocol`` use them.

The same frames must come out however the reads are sized (every split offset, every read size,
random sizes), a large DATA body must be received straight into the buffer that becomes the
frame's body, and the caps must still refuse a frame before anything is allocated for it.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import payload, prefix

from tether.errors import RemoteProtocolError
from tether.protocol.connection import NEED_DATA, Connection
from tether.protocol.frames import (
    DIRECT_AFTER,
    DIRECT_MIN,
    KIND_DATA,
    KIND_MSG,
    MAX_BODY,
    PREFIX_SIZE,
    Frame,
    FrameDecoder,
    encode_data_prefix,
    encode_msg,
)
from tether.protocol.messages import Data, Role


def data_frame(stream: int, channel: int, body: bytes) -> tuple[bytes, Frame]:
    return encode_data_prefix(stream, channel, len(body)) + body, Frame(
        KIND_DATA, stream, channel, None, body)


def msg_frame(stream: int, header: dict[str, object], body: bytes = b"") -> tuple[bytes, Frame]:
    return encode_msg(stream, header, body), Frame(KIND_MSG, stream, 0, header, body)


def stream_of(parts: list[tuple[bytes, Frame]]) -> tuple[bytes, list[Frame]]:
    return b"".join(raw for raw, _ in parts), [frame for _, frame in parts]


# Small frames around a large DATA body, a body just below and just above the direct threshold,
# and a large MSG body (which always stays in the shared buffer).
MIXED = stream_of([
    msg_frame(0, {"t": "ping"}),
    data_frame(1, 0, payload(3, 1)),
    data_frame(1, 0, payload(MAX_BODY, 2)),
    data_frame(3, 1, payload(DIRECT_MIN, 3)),
    data_frame(3, 2, payload(DIRECT_MIN + 1, 4)),
    msg_frame(5, {"t": "x", "n": 1}, payload(200_000, 5)),
    data_frame(1, 0, payload(MAX_BODY, 6)),
    msg_frame(7, {"t": "end"}),
])
SMALL = stream_of([msg_frame(0, {"t": "ping"}), data_frame(1, 0, b"abc"),
                   msg_frame(3, {"t": "x", "s": "é"}, b"body"), data_frame(3, 2, b"z")])


def receive(data: bytes, sizes: list[int], decoder: FrameDecoder | None = None) -> list[Frame]:
    """Receive ``data`` the way recv_into does: at most ``size`` bytes per read, cycling."""
    decoder = decoder or FrameDecoder()
    frames: list[Frame] = []
    pos, i = 0, 0
    while pos < len(data):
        space = decoder.get_buffer(sizes[i % len(sizes)])
        assert len(space) > 0, "get_buffer must never hand out an empty buffer"
        n = min(len(space), sizes[i % len(sizes)], len(data) - pos)
        space[:n] = data[pos : pos + n]
        space.release()
        decoder.buffer_updated(n)
        pos, i = pos + n, i + 1
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    decoder.feed(b"")
    assert decoder.next_frame() is None and decoder.buffered == 0 and decoder.queued == 0
    return frames


@pytest.mark.parametrize("size", [1, 7, PREFIX_SIZE, 4096, 65536, 1 << 20, 1 << 22])
def test_every_read_size(size: int) -> None:
    data, expected = MIXED
    assert receive(data, [size]) == expected


def test_every_two_piece_split() -> None:
    data, expected = SMALL
    for offset in range(1, len(data)):
        assert receive(data, [offset, len(data)]) == expected, f"split at {offset}"


def test_every_split_around_a_direct_body() -> None:
    """A cut anywhere in the first DIRECT_AFTER + a bit of a large body, then the rest."""
    body = payload(DIRECT_MIN + 5000, 9)
    data, expected = stream_of([data_frame(1, 0, body), msg_frame(3, {"t": "after"})])
    for offset in range(0, PREFIX_SIZE + DIRECT_AFTER + 64, 7):
        assert receive(data, [max(offset, 1), len(data)]) == expected, f"split at {offset}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 300_000), min_size=1, max_size=30))
def test_random_read_sizes(sizes: list[int]) -> None:
    data, expected = MIXED
    assert receive(data, sizes) == expected


def test_a_large_body_is_received_into_its_own_buffer() -> None:
    body = payload(MAX_BODY, 3)
    decoder = FrameDecoder()
    decoder.feed(encode_data_prefix(1, 0, MAX_BODY) + body[:DIRECT_AFTER])
    space = decoder.get_buffer(-1)
    assert len(space) == MAX_BODY - DIRECT_AFTER  # exactly the rest of this body
    space[:] = body[DIRECT_AFTER:]
    decoder.buffer_updated(len(space))
    frame = decoder.next_frame()
    assert frame is not None and frame.body == body
    assert isinstance(frame.body, bytearray) and space.obj is frame.body  # no copy after it
    assert decoder.buffered == 0 and decoder.next_frame() is None


def test_buffered_and_queued_count_partial_and_complete_frames() -> None:
    decoder = FrameDecoder()
    first, _ = data_frame(1, 0, b"x" * 10)
    decoder.feed(first + first[:5])
    assert decoder.queued == 10 and decoder.buffered == 5
    assert decoder.next_frame() is not None
    assert decoder.queued == 0 and decoder.buffered == 5


def test_a_capped_length_is_refused_before_any_allocation() -> None:
    tracemalloc.start()
    try:
        decoder = FrameDecoder()
        space = decoder.get_buffer(-1)
        raw = prefix(KIND_DATA, 0, 1, 0, MAX_BODY + 1)
        space[:PREFIX_SIZE] = raw
        space.release()
        decoder.buffer_updated(PREFIX_SIZE)
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            decoder.next_frame()
        assert len(decoder.get_buffer(-1)) > 0  # what follows is dropped, never buffered
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 128 * 1024


def test_a_body_buffer_needs_bytes_not_just_a_prefix() -> None:
    """A peer announcing MAX_BODY and sending little gets no MAX_BODY allocation."""
    tracemalloc.start()
    try:
        decoder = FrameDecoder()
        decoder.feed(encode_data_prefix(1, 0, MAX_BODY) + bytes(DIRECT_AFTER - 1))
        space = decoder.get_buffer(-1)
        assert len(space) < MAX_BODY
        space.release()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_frames_before_a_bad_prefix_still_come_out() -> None:
    good, frame = data_frame(1, 0, b"ok")
    decoder = FrameDecoder()
    decoder.feed(good + prefix(KIND_DATA, 9, 1, 0, 1) + b"x")
    assert decoder.next_frame() == frame
    with pytest.raises(RemoteProtocolError, match="unknown channel"):
        decoder.next_frame()


def test_connection_receives_through_the_buffer_api() -> None:
    """The sans-I/O Connection exposes the same buffer API (used by the asyncio adapter)."""
    conn = Connection(Role.SERVER)
    hello = encode_msg(0, {"t": "hello", "versions": [1], "software": "t"})
    space = conn.get_buffer(-1)
    space[: len(hello)] = hello
    space.release()
    conn.buffer_updated(len(hello))
    assert conn.queued > 0
    event = conn.next_event()
    assert not isinstance(event, Data) and event is not NEED_DATA
    assert conn.queued == 0 and conn.next_event() is NEED_DATA


def test_between_frames_a_decoder_holds_no_buffer() -> None:
    """1,000 idle connections must cost little: a buffer lives only while a frame is partial."""
    raw, _ = msg_frame(0, {"t": "ping"})
    tracemalloc.start()
    try:
        decoders = [FrameDecoder() for _ in range(100)]
        baseline, _ = tracemalloc.get_traced_memory()
        for decoder in decoders:
            space = decoder.get_buffer(-1)  # a full-size buffer while bytes come in...
            space[: len(raw)] = raw
            space.release()
            decoder.buffer_updated(len(raw))
            assert decoder.next_frame() is not None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - baseline < 100 * 1024  # ...and none kept afterwards (64 KiB each if it were)


def test_take_unread_gives_back_the_bytes_as_they_came() -> None:
    """What a root server hands a worker after the hello (server/privsep.py): every byte not
    yet taken, complete frames and the partial one alike, exactly as received."""
    wire = (encode_msg(1, {"t": "exec", "argv": ["true"]}) + encode_data_prefix(1, 0, 3)
            + b"abc" + encode_msg(3, {"t": "close"}))
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        decoder.feed(wire[:cut])
        assert decoder.take_unread() == wire[:cut]
        assert decoder.next_frame() is None and decoder.buffered == decoder.queued == 0
