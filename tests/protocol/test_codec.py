"""Frames survive any split of the byte stream: whole, byte by byte, at every offset, at random.

The same realistic sequence (JSON-headed MSG frames, DATA frames of 1 byte to MAX_BODY on
channels 0/1/2) is fed to a bare FrameDecoder and to a Connection of the receiving role; the
decoded frames and events must be identical however the bytes were cut.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    events_from,
    frames_from,
    one_byte_at_a_time,
    payload,
    split_at,
)

from tether.errors import RemoteProtocolError
from tether.protocol.connection import CLOSED, NEED_DATA, Connection, Event, State
from tether.protocol.frames import (
    KIND_DATA,
    KIND_MSG,
    MAX_BODY,
    Frame,
    FrameDecoder,
    encode_data_prefix,
    encode_msg,
)
from tether.protocol.messages import (
    Close,
    Commit,
    Credit,
    Data,
    Done,
    Eof,
    Error,
    Exec,
    Exit,
    Get,
    Hello,
    Message,
    Meta,
    Ping,
    Put,
    Role,
    Signal,
    Started,
    Welcome,
)

Item = Message | Data

BIG_SIZES = (1, 2, 255, MAX_BODY, 4096, 65536, 3)
SMALL_SIZES = (1, 2, 3, 17, 100)


def encode(item: Item) -> bytes:
    if isinstance(item, Data):
        return encode_data_prefix(item.stream, item.channel, len(item.data)) + item.data
    return encode_msg(item.stream, item.to_header())


def encode_all(items: list[Item]) -> bytes:
    return b"".join(encode(item) for item in items)


def as_frame(item: Item) -> Frame:
    """The frame a decoder must produce for ``item``, built without the decoder."""
    if isinstance(item, Data):
        return Frame(KIND_DATA, item.stream, item.channel, None, item.data)
    return Frame(KIND_MSG, item.stream, 0, item.to_header(), b"")


def server_script(sizes: tuple[int, ...]) -> list[Item]:
    """What a server sends a client that said hello and then opened exec 1 and get 3."""
    items: list[Item] = [
        Welcome(version=1, server_name="bøx ✓", platform="linux", permissions=["exec", "get"]),
        Started(pid=31337, stream=1),
        Meta(size=sum(sizes[1::2]), mode=0o600, mtime_ns=1_700_000_000_123_456_789, stream=3),
    ]
    for i, size in enumerate(sizes):  # stdout, file data, stderr, file data, ...
        items.append(Data(1, 1 + i // 2 % 2, payload(size, seed=i)) if i % 2 == 0
                     else Data(3, 0, payload(size, seed=i)))
    items += [
        Ping(token=2**40),
        Credit(size=12345, stream=1),
        Exit(status=3, signal=None, timed_out=False, duration=0.125, stream=1),
        Done(path="/srv/ünïcode file", size=sum(sizes[1::2]), hash="b3:" + "ab" * 32, stream=3),
    ]
    return items


def client_script(sizes: tuple[int, ...]) -> list[Item]:
    """What a client sends: hello (the server answers welcome), then an exec and a put."""
    items: list[Item] = [
        Hello(versions=[1], software="tether/test"),
        Exec(argv=["sh", "-c", 'echo "$X" >&2'], env={"X": "\u2603\n"}, timeout=9.5, stream=1),
        Put(path="dir/new file", size=sum(sizes), mode=0o755, mtime_ns=2**62, stream=3),
    ]
    for i, size in enumerate(sizes):
        items.append(Data(1 + 2 * (i % 2), 0, payload(size, seed=200 + i)))
    items += [
        Signal(name="TERM", stream=1),
        Eof(channel=0, stream=1),
        Commit(size=sum(sizes), hash="b3:" + "cd" * 32, stream=3),
        Credit(size=CREDIT, stream=1),
        Close(stream=1),
        Error(code="failed", message="abandoned \x00 \ud7ff", stream=3),
    ]
    return items


CREDIT = 1024 * 1024


def react(conn: Connection, event: Event) -> None:
    """The application's part of the conversation, so both scripts are valid for the receiver."""
    if isinstance(event, Hello):
        conn.send(Welcome(version=1))
    elif isinstance(event, Welcome):
        conn.send(Exec(argv=["cat"], stream=1))
        conn.send(Get(path="f", stream=3))


def receiver(role: Role) -> Connection:
    conn = Connection(role)
    if role is Role.CLIENT:
        conn.send(Hello(versions=[1]))
    return conn


def feed_reacting(conn: Connection, data: bytes) -> list[Event]:
    """Feed ``data`` and collect events up to NEED_DATA, reacting to each as it comes."""
    conn.receive_data(data)
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        react(conn, event)
        events.append(event)
    return events


def events_in_pieces(role: Role, pieces: list[bytes]) -> list[Event]:
    """Every event a ``role`` connection yields for these pieces, then for a clean EOF."""
    conn = receiver(role)
    events: list[Event] = []
    for piece in pieces:
        events += feed_reacting(conn, piece)
    events += events_from(conn, eof=True)
    return events


SCRIPTS = {Role.CLIENT: server_script, Role.SERVER: client_script}

BIG = {role: encode_all(SCRIPTS[role](BIG_SIZES)) for role in Role}
SMALL = {role: encode_all(SCRIPTS[role](SMALL_SIZES)) for role in Role}


def expected(items: list[Item]) -> list[Event]:
    """The events a receiver yields: all but pings, which its core answers by itself."""
    return [*(item for item in items if not isinstance(item, Ping)), CLOSED]


EXPECTED_BIG = {role: expected(SCRIPTS[role](BIG_SIZES)) for role in Role}
EXPECTED_SMALL = {role: expected(SCRIPTS[role](SMALL_SIZES)) for role in Role}


def decoder_stream(items: list[Item]) -> tuple[bytes, list[Frame]]:
    """``items`` plus frames only the bare codec sees: a MSG with a body and a DATA frame
    whose body is itself a whole frame (the decoder must not resync on the magic inside it)."""
    inner = encode(Exit(status=0, stream=1))
    extra: list[tuple[bytes, Frame]] = [
        (encode_msg(5, {"t": "x", "n": [1, [2, {"k": None}]]}, b"attached body"),
         Frame(KIND_MSG, 5, 0, {"t": "x", "n": [1, [2, {"k": None}]]}, b"attached body")),
        (encode_data_prefix(7, 2, len(inner)) + inner, Frame(KIND_DATA, 7, 2, None, inner)),
    ]
    data = encode_all(items) + b"".join(raw for raw, _ in extra)
    return data, [as_frame(item) for item in items] + [frame for _, frame in extra]


DECODER_BIG = decoder_stream(server_script(BIG_SIZES))  # ~1.1 MiB: byte by byte takes a second
DECODER_SMALL = decoder_stream(server_script(SMALL_SIZES) + client_script(SMALL_SIZES))


def decode(pieces: list[bytes], *, eof: bool = True) -> list[Frame]:
    decoder = FrameDecoder()
    frames = frames_from(decoder, pieces)
    if eof:
        decoder.feed(b"")
        assert decoder.next_frame() is None
        assert decoder.at_eof and decoder.buffered == 0
    return frames


# --- the bare decoder --------------------------------------------------------------------------


def test_scripts_cover_every_size_and_channel() -> None:
    data, frames = DECODER_BIG
    sizes = {len(f.body) for f in frames if f.kind == KIND_DATA}
    assert set(BIG_SIZES) <= sizes
    assert {f.channel for f in frames if f.kind == KIND_DATA} == {0, 1, 2}
    assert len(data) > MAX_BODY + 65536


def test_decoder_whole() -> None:
    data, expected = DECODER_BIG
    assert decode([data]) == expected


def test_decoder_one_byte_at_a_time() -> None:
    data, expected = DECODER_BIG
    assert decode(one_byte_at_a_time(data)) == expected


def test_decoder_every_two_piece_split() -> None:
    data, expected = DECODER_SMALL
    assert len(data) < 8192  # keep the loop modest
    for offset in range(len(data) + 1):
        assert decode(split_at(data, [offset])) == expected, f"split at {offset}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, len(DECODER_BIG[0])), max_size=40))
def test_decoder_random_pieces_big(cuts: list[int]) -> None:
    data, expected = DECODER_BIG
    assert decode(split_at(data, cuts)) == expected


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(0, len(DECODER_SMALL[0])), max_size=200))
def test_decoder_random_pieces_small(cuts: list[int]) -> None:
    data, expected = DECODER_SMALL
    assert decode(split_at(data, cuts)) == expected


def test_decoder_returns_none_until_a_frame_is_complete() -> None:
    frame = encode(Data(1, 1, b"xyz"))
    decoder = FrameDecoder()
    for i, byte in enumerate(one_byte_at_a_time(frame)[:-1]):
        decoder.feed(byte)
        assert decoder.next_frame() is None
        assert decoder.buffered == i + 1
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == Frame(KIND_DATA, 1, 1, None, b"xyz")
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


# --- a Connection of the receiving role ----------------------------------------------------


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_connection_whole(role: Role) -> None:
    assert events_in_pieces(role, [BIG[role]]) == EXPECTED_BIG[role]


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_connection_one_byte_at_a_time(role: Role) -> None:
    assert events_in_pieces(role, one_byte_at_a_time(BIG[role])) == EXPECTED_BIG[role]


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_connection_every_two_piece_split(role: Role) -> None:
    data = SMALL[role]
    for offset in range(len(data) + 1):
        events = events_in_pieces(role, split_at(data, [offset]))
        assert events == EXPECTED_SMALL[role], f"split at {offset}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    role=st.sampled_from(list(Role)),
    cuts=st.lists(st.integers(0, max(len(b) for b in BIG.values())), max_size=40),
)
def test_connection_random_pieces(role: Role, cuts: list[int]) -> None:
    data = BIG[role]
    pieces = split_at(data, [c for c in cuts if c <= len(data)])
    assert events_in_pieces(role, pieces) == EXPECTED_BIG[role]


# --- end of stream -------------------------------------------------------------------------


def test_clean_eof_at_a_frame_boundary_is_closed() -> None:
    conn = receiver(Role.SERVER)
    assert feed_reacting(conn, SMALL[Role.SERVER]) == EXPECTED_SMALL[Role.SERVER][:-1]
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED
    assert conn.state is State.CLOSED
    assert conn.next_event() is CLOSED  # and it stays closed


def test_eof_before_any_byte_is_closed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert events_from(Connection(Role.SERVER), eof=True) == [CLOSED]


def test_eof_inside_every_offset_of_a_frame_is_an_error() -> None:
    head = encode(Hello(versions=[1]))
    last = encode(Error(code="failed", message="bye"))
    for cut in range(1, len(last)):
        decoder = FrameDecoder()
        assert frames_from(decoder, [head + last[:cut]]) == [as_frame(Hello(versions=[1]))]
        decoder.feed(b"")
        with pytest.raises(RemoteProtocolError, match=rf"closed in the middle of a frame \({cut} "):
            decoder.next_frame()


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_connection_eof_mid_frame_after_good_frames(role: Role) -> None:
    data, trailing = SMALL[role], encode(Ping(token=5))
    for cut in (1, 15, 16, 17, len(trailing) - 1):
        conn = receiver(role)
        events = feed_reacting(conn, data + trailing[:cut])
        assert events == EXPECTED_SMALL[role][:-1]
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="closed in the middle of a frame"):
            conn.next_event()
        with pytest.raises(RemoteProtocolError):  # a failed connection stays failed
            conn.next_event()
