"""Hypothesis over (state, input) pairs, in the style of h2's tests/test_state_machines.py.

A connection of either role is driven through random mixes of its own sends and the peer's
frames, valid and invalid. Every step must either work (an event, NEED_DATA, bytes to send) or
raise the right ProtocolError: RemoteProtocolError for what came in, LocalProtocolError for what
we tried to send. Any other exception (KeyError, TypeError, struct.error, AssertionError...) is a
bug, and so is an event the rules forbid. The valid conversations reordered at the end are
generated from the stream tables (tests/conversations.py), never written by hand.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import events_from, prefix, raw_data, raw_msg, split_at, wire

from conversations import conversation
from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.connection import (
    CLOSED,
    MAX_CREDIT,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    Connection,
    State,
)
from tether.protocol.frames import KIND_DATA, KIND_MSG, MAGIC, MAX_BODY
from tether.protocol.messages import (
    REGISTRY,
    Data,
    Hello,
    Message,
    Ping,
    Pong,
    Refused,
    Role,
    Welcome,
)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REMOTE_STREAMS = st.sampled_from([0, 1, 1, 1, 2, 3, 3, 5, 7, 2**32 - 1])
LOCAL_STREAMS = st.one_of(REMOTE_STREAMS, st.sampled_from([-1, 2**32, 2**40 + 1]))
SMALL_INTS = st.one_of(st.integers(-2, 5), st.integers(), st.sampled_from([MAX_CREDIT, 2**64]))
FLOATS = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.5]))

JSON = st.recursive(
    st.none() | st.booleans() | SMALL_INTS | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=12,
)


def values_for(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a message field's annotated type, edge cases included (NaN, huge ints...)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return st.one_of(*(values_for(arg) for arg in typing.get_args(hint)))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        bool: st.booleans(),
        int: SMALL_INTS,
        float: FLOATS,
        str: st.text(max_size=8),
    }
    if hint in simple:
        return simple[hint]
    if origin is list:
        return st.lists(values_for(typing.get_args(hint)[0]), max_size=3)
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(values_for(key), values_for(value), max_size=3)
    raise AssertionError(f"no strategy for {hint!r}")


def messages_of(cls: type[Message], streams: st.SearchStrategy[int]) -> st.SearchStrategy[Message]:
    fields = {f.name: values_for(f.type) for f in cls.FIELDS if f.name != "stream"}
    return st.builds(cls, stream=streams, **fields)


def messages(
    streams: st.SearchStrategy[int], role: Role | None = None
) -> st.SearchStrategy[Message]:
    """Messages of any type; with ``role``, mostly of the types that role may send."""
    names = sorted(REGISTRY)
    if role is not None:
        own = [name for name in names if role in REGISTRY[name].SENDERS]
        names_st = st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from(names))
    else:
        names_st = st.sampled_from(names)
    return names_st.flatmap(lambda t: messages_of(REGISTRY[t], streams))


OPENERS = sorted(name for name, cls in REGISTRY.items() if cls.OPENS)


@st.composite
def mutated_headers(draw: st.DrawFn, msg: Message) -> dict[str, Any]:
    """The header of ``msg``, sometimes with a field dropped, replaced or added."""
    header = msg.to_header()
    action = draw(st.sampled_from(["keep", "keep", "drop", "replace", "add"]))
    if action == "drop":
        header.pop(draw(st.sampled_from(sorted(header))))
    elif action == "replace":
        header[draw(st.sampled_from(sorted(header)))] = draw(JSON)
    elif action == "add":
        header[draw(st.text(max_size=6))] = draw(JSON)
    return header


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receive:
    raw: bytes


@dataclass(frozen=True)
class Send:
    msg: Message


@dataclass(frozen=True)
class SendData:
    stream: int
    channel: int
    size: int


@dataclass(frozen=True)
class Consume:
    stream: int
    size: int


Action = Receive | Send | SendData | Consume


@st.composite
def remote_msg_frames(draw: st.DrawFn, sender: Role | None = None) -> Receive:
    msg = draw(messages(REMOTE_STREAMS, sender))
    header = draw(mutated_headers(msg))
    return Receive(raw_msg(json.dumps(header).encode(), msg.stream))  # NaN and all


def remote_actions(sender: Role) -> st.SearchStrategy[Receive]:
    return st.one_of(
        remote_msg_frames(sender),
        remote_msg_frames(sender),
        st.builds(lambda s, c, b: Receive(raw_data(s, c, b)), REMOTE_STREAMS,
                  st.sampled_from([0, 0, 1, 2, 3]), st.binary(min_size=1, max_size=9)),
        st.builds(Receive, st.binary(max_size=24)),  # garbage, or b"": EOF
    )


def local_actions(role: Role) -> st.SearchStrategy[Send | SendData | Consume]:
    openers = st.sampled_from(OPENERS).flatmap(lambda t: messages_of(REGISTRY[t], LOCAL_STREAMS))
    return st.one_of(
        st.builds(Send, messages(LOCAL_STREAMS, role)),
        st.builds(Send, openers),
        st.builds(SendData, LOCAL_STREAMS, st.integers(-1, 3),
                  st.one_of(st.integers(-1, 9), st.just(MAX_BODY + 1))),
        st.builds(Consume, LOCAL_STREAMS, st.one_of(st.integers(-1, 9), st.integers(0, 2**33))),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Role, bool, list[Action]]:
    """A role, whether to start after a good handshake, and what happens next."""
    role = draw(st.sampled_from(list(Role)))
    peer = Role.SERVER if role is Role.CLIENT else Role.CLIENT
    actions = draw(st.lists(st.one_of(remote_actions(peer), local_actions(role)), max_size=25))
    return role, draw(st.booleans()), actions


# --- the driver ----------------------------------------------------------------------------


def handshake(conn: Connection) -> None:
    """Bring ``conn`` to OPEN with a correct handshake, as if the peer were well behaved."""
    if conn.role is Role.CLIENT:
        conn.send(Hello(versions=list(PROTOCOL_VERSIONS)))
        assert events_from(conn, wire(Welcome(version=1))) == [Welcome(version=1)]
    else:
        assert events_from(conn, wire(Hello(versions=[1]))) == [Hello(versions=[1])]
        conn.send(Welcome(version=1))
    assert conn.state is State.OPEN


def check_event(conn: Connection, event: Message | Data | Refused) -> None:
    """What the rules promise about any event a connection hands to its application."""
    peer = Role.SERVER if conn.role is Role.CLIENT else Role.CLIENT
    if isinstance(event, Refused):
        assert peer is Role.CLIENT and event.request.OPENS and event.reason
        assert conn.is_open(event.stream)
        return
    assert not isinstance(event, Ping | Pong), "the core answers pings itself"
    if isinstance(event, Data):
        assert event.stream % 2 == 1 and event.data
        assert event.channel == 0 or peer is Role.SERVER
        return
    assert peer in event.SENDERS
    if event.CONNECTION:
        assert event.stream == 0
    elif event.stream == 0:
        assert event.TYPE == "error"
    else:
        assert event.stream % 2 == 1


def receive(conn: Connection, raw: bytes) -> bool:
    """Feed ``raw``; False once the connection has (rightly) failed."""
    conn.receive_data(raw)
    try:
        while (event := conn.next_event()) is not NEED_DATA and event is not CLOSED:
            assert not isinstance(event, type(NEED_DATA))
            check_event(conn, event)
    except RemoteProtocolError as exc:
        assert str(exc)
        with pytest.raises(RemoteProtocolError, match="already failed"):
            conn.next_event()
        return False
    return True


def snapshot(conn: Connection) -> tuple[object, ...]:
    """Everything a user can observe about a connection's state."""
    ids = (1, 3, 5, 7, 2**32 - 1)
    return (conn.state, conn.version, conn.open_streams,
            tuple((conn.is_open(i), conn.can_send(i), conn.send_window(i)) for i in ids))


def act(conn: Connection, action: Send | SendData | Consume) -> None:
    """Do one local action; a refusal must be a LocalProtocolError that changed nothing."""
    before = snapshot(conn)
    try:
        if isinstance(action, Send):
            out = conn.send(action.msg)
        elif isinstance(action, SendData):
            out = conn.data_prefix(action.stream, action.channel, action.size)
        else:
            conn.consumed(action.stream, action.size)
            out = conn.data_to_send()
    except LocalProtocolError as exc:
        assert str(exc)
        assert snapshot(conn) == before
        return
    assert isinstance(out, bytes)


def check_invariants(conn: Connection) -> None:
    assert conn.state in State
    assert conn.open_streams >= 0
    for stream in (1, 3, 5, 7, 2**32 - 1):
        assert 0 <= conn.send_window(stream) <= MAX_CREDIT


def drive(role: Role, start_open: bool, actions: list[Action]) -> None:
    conn = Connection(role)
    if start_open:
        handshake(conn)
    alive = True
    for action in actions:
        if isinstance(action, Receive):
            if alive:
                alive = receive(conn, action.raw)
        else:
            act(conn, action)
        check_invariants(conn)


@FUZZ
@given(scenario=scenarios())
def test_every_state_and_input_either_works_or_is_a_protocol_error(
    scenario: tuple[Role, bool, list[Action]],
) -> None:
    drive(*scenario)


@FUZZ
@given(role=st.sampled_from(list(Role)), frames=st.lists(remote_msg_frames(), max_size=12),
       cuts=st.lists(st.integers(0, 4096), max_size=8))
def test_mutated_messages_in_random_pieces(
    role: Role, frames: list[Receive], cuts: list[int]
) -> None:
    conn = Connection(role)
    handshake(conn)
    data = b"".join(frame.raw for frame in frames)
    for piece in split_at(data, [c for c in cuts if c < len(data)]):
        if not receive(conn, piece):
            return
    receive(conn, b"")


# --- random bytes --------------------------------------------------------------------------


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """A prefix with the right magic and small lengths, then random (or JSON) bytes."""
    kind = draw(st.sampled_from([KIND_MSG, KIND_DATA, 0, 3]))
    header = draw(st.one_of(st.binary(max_size=12),
                            JSON.map(lambda v: json.dumps(v).encode())))
    if kind == KIND_DATA and draw(st.booleans()):
        header = b""
    body = draw(st.binary(max_size=12))
    channel = draw(st.integers(0, 3))
    stream = draw(st.integers(0, 9))
    return prefix(kind, channel, stream, len(header), len(body)) + header + body


RANDOM_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(plausible_frames(), max_size=6).map(b"".join),
    st.tuples(st.binary(max_size=20), st.binary(max_size=40)).map(lambda t: t[0] + MAGIC + t[1]),
)


@FUZZ
@given(data=RANDOM_BYTES, cuts=st.lists(st.integers(0, 400), max_size=6), handshaken=st.booleans())
def test_random_bytes_to_a_server(data: bytes, cuts: list[int], handshaken: bool) -> None:
    conn = Connection(Role.SERVER)
    if handshaken:
        handshake(conn)
    for piece in split_at(data, [c for c in cuts if c < len(data)]):
        if not receive(conn, piece):
            return
    conn.receive_data(b"")
    try:
        while (event := conn.next_event()) is not CLOSED:
            assert event is not NEED_DATA  # after EOF there is nothing more to wait for
    except RemoteProtocolError:
        return
    assert conn.state is State.CLOSED


# --- valid conversations from the stream tables, reordered --------------------------------------

TALK = conversation()


def replay(role: Role, frames: list[bytes]) -> None:
    """Feed ``frames`` to a fresh ``role`` connection that reacts as its application would
    (a client opens the conversation's streams once welcomed); every event must obey the
    rules, and a violation must be a RemoteProtocolError."""
    conn = Connection(role)
    if role is Role.CLIENT:
        conn.send(Hello(versions=[1]))
    for raw in frames:
        conn.receive_data(raw)
        try:
            while (event := conn.next_event()) is not NEED_DATA and event is not CLOSED:
                assert not isinstance(event, type(NEED_DATA))
                check_event(conn, event)
                if isinstance(event, Welcome):
                    for opener in TALK.openers:
                        conn.send(opener)
                elif isinstance(event, Hello):
                    conn.send(Welcome(version=1))
        except RemoteProtocolError as exc:
            assert str(exc)
            return


def test_the_generated_conversation_is_valid_for_both_roles() -> None:
    for role, frames in ((Role.SERVER, TALK.up), (Role.CLIENT, TALK.down)):
        replay(role, frames)  # no error: every frame of every table walk is accepted
        conn = Connection(role)
        if role is Role.CLIENT:
            conn.send(Hello(versions=[1]))
        count = 0
        for raw in frames:
            for event in events_from(conn, raw):
                count += 1
                if isinstance(event, Welcome):
                    for opener in TALK.openers:
                        conn.send(opener)
                elif isinstance(event, Hello):
                    conn.send(Welcome(version=1))
        assert count == (TALK.up_events if role is Role.SERVER else TALK.down_events)


@FUZZ
@given(role=st.sampled_from(list(Role)), data=st.data())
def test_reordered_valid_conversations(role: Role, data: st.DataObject) -> None:
    """Frames of a valid conversation dropped, repeated or swapped: each step still either
    works or is a RemoteProtocolError (a frame out of its table's order among them)."""
    frames = list(TALK.up if role is Role.SERVER else TALK.down)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(1, len(frames) - 1))  # the handshake stays first
        j = data.draw(st.integers(1, len(frames) - 1))
        op = data.draw(st.sampled_from(["drop", "repeat", "swap"]))
        if op == "drop" and len(frames) > 2:
            del frames[i]
        elif op == "repeat":
            frames.insert(j, frames[i])
        else:
            frames[i], frames[j] = frames[j], frames[i]
    replay(role, frames)
