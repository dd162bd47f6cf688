"""The connection state machine, driven through a client and a server with no sockets."""

from __future__ import annotations

import pytest
from protocol_helpers import (
    SAMPLES,
    Pair,
    events_from,
    handshaken_pair,
    payload,
    raw_data,
    raw_msg,
    sample,
    types_not_sent_by,
    types_sent_by,
    wire,
)

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.connection import (
    CLOSED,
    CREDIT_THRESHOLD,
    INITIAL_WINDOW,
    MAX_CREDIT,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    Connection,
    State,
)
from tether.protocol.frames import MAX_BODY
from tether.protocol.messages import (
    REGISTRY,
    Close,
    Credit,
    Data,
    Eof,
    Error,
    Exec,
    Exit,
    Get,
    Hello,
    Ping,
    Pong,
    Role,
    Signal,
    Started,
    Welcome,
)

# --- the happy path ----------------------------------------------------------------------------


def test_full_round_trip() -> None:
    pair = Pair()
    assert pair.client.state is State.HANDSHAKE and pair.server.state is State.HANDSHAKE
    assert pair.client_sends(Hello(versions=[1], software="t/1")) == [
        Hello(versions=[1], software="t/1")
    ]
    welcome = Welcome(version=1, server_name="box", permissions=["exec"])
    assert pair.server_sends(welcome) == [welcome]
    assert pair.client.state is State.OPEN and pair.server.state is State.OPEN
    assert pair.client.version == pair.server.version == 1

    assert pair.client_sends(Ping(token=5)) == []  # answered by the server's core
    assert events_from(pair.client, pair.server.data_to_send()) == []  # the pong, absorbed

    stream = pair.client.next_stream_id()
    assert stream == 1
    run = Exec(argv=["cat"], env={"A": "b"}, stream=stream)
    assert pair.client_sends(run) == [run]
    assert pair.client.is_open(1) and pair.server.is_open(1)
    assert pair.client.next_stream_id() == 3
    assert pair.server_sends(Started(pid=99, stream=1)) == [Started(pid=99, stream=1)]

    assert pair.client_data(1, 0, b"stdin bytes") == [Data(1, 0, b"stdin bytes")]
    assert pair.client_sends(Eof(channel=0, stream=1)) == [Eof(channel=0, stream=1)]
    assert pair.server_data(1, 1, b"out") == [Data(1, 1, b"out")]
    assert pair.server_data(1, 2, b"err") == [Data(1, 2, b"err")]
    assert pair.client_sends(Signal(name="INT", stream=1)) == [Signal(name="INT", stream=1)]
    assert pair.server_sends(Exit(status=0, stream=1)) == [Exit(status=0, stream=1)]
    assert not pair.client.can_send(1) and not pair.server.can_send(1)
    assert pair.client_sends(Close(stream=1)) == [Close(stream=1)]

    assert not pair.client.is_open(1) and not pair.server.is_open(1)
    assert pair.client.open_streams == pair.server.open_streams == 0
    assert events_from(pair.server, eof=True) == [CLOSED]
    assert pair.server.state is State.CLOSED


def test_many_streams_interleave() -> None:
    pair = handshaken_pair()
    streams = [pair.open_exec() for _ in range(5)]
    assert streams == [1, 3, 5, 7, 9]
    for stream in reversed(streams):
        assert pair.server_data(stream, 1, b"%d" % stream) == [Data(stream, 1, b"%d" % stream)]
    for stream in streams[::2]:
        pair.server_sends(Exit(status=stream, stream=stream))
        pair.client_sends(Close(stream=stream))
    assert pair.client.open_streams == pair.server.open_streams == 2
    assert pair.client_data(3, 0, b"x") == [Data(3, 0, b"x")]


def test_server_refusal_during_handshake_closes_both_sides() -> None:
    pair = Pair()
    pair.client_sends(Hello(versions=[1]))
    refusal = Error(code="not_authorized", message="who are you")
    assert pair.server_sends(refusal) == [refusal]
    assert pair.client.state is State.CLOSED and pair.server.state is State.CLOSED


def test_stream_error_ends_only_that_stream() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    failed = Error(code="spawn_failed", message="no such file", stream=1)
    assert pair.server_sends(failed) == [failed]
    assert pair.client_sends(Close(stream=1)) == [Close(stream=1)]
    assert pair.client.state is State.OPEN and pair.open_exec() == 3


# --- roles ---------------------------------------------------------------------------------


def test_samples_cover_the_registry() -> None:
    assert set(SAMPLES) == set(REGISTRY)
    assert types_not_sent_by(Role.CLIENT) == [
        "connected", "done", "entries", "entry", "exit", "files", "incoming", "listening",
        "meta", "ready", "started", "status", "sync_deleted", "welcome",
    ]
    assert types_not_sent_by(Role.SERVER) == [
        "batch", "begin", "close", "commit", "connect", "exec", "fetch", "get", "hello",
        "list", "listen", "put", "resize", "shell", "signal", "sync", "sync_sent",
    ]


@pytest.mark.parametrize("type_name", types_not_sent_by(Role.CLIENT))
def test_server_rejects_server_only_messages_from_a_client(type_name: str) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match=f"a client may not send '{type_name}'"):
        pair.to_server(wire(sample(type_name)))


@pytest.mark.parametrize("type_name", types_not_sent_by(Role.SERVER))
def test_client_rejects_client_only_messages_from_a_server(type_name: str) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match=f"a server may not send '{type_name}'"):
        pair.to_client(wire(sample(type_name)))


@pytest.mark.parametrize("channel", [1, 2])
def test_server_rejects_output_channels_from_a_client(channel: int) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match=f"a client may not send on channel {channel}"):
        pair.to_server(raw_data(1, channel, b"fake stdout"))


@pytest.mark.parametrize("channel", [1, 2])
def test_client_rejects_eof_on_output_channels_from_a_client(channel: int) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match=f"may not send on channel {channel}"):
        pair.to_server(wire(Eof(channel=channel, stream=1)))


@pytest.mark.parametrize(
    ("role", "type_name"),
    [(Role.CLIENT, name) for name in types_not_sent_by(Role.CLIENT)]
    + [(Role.SERVER, name) for name in types_not_sent_by(Role.SERVER)],
)
def test_local_side_may_not_send_the_other_roles_messages(role: Role, type_name: str) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    conn = pair.client if role is Role.CLIENT else pair.server
    with pytest.raises(LocalProtocolError, match=f"a {role.value} may not send '{type_name}'"):
        conn.send(sample(type_name))


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_each_side_accepts_the_shared_messages(role: Role) -> None:
    shared = sorted(set(types_sent_by(Role.CLIENT)) & set(types_sent_by(Role.SERVER)))
    assert shared == ["credit", "eof", "error", "ping", "pong", "sync_batch", "sync_commit",
                      "sync_file", "sync_list", "sync_listed", "sync_want"]
    pair = handshaken_pair()
    pair.open_exec()
    send = pair.client_sends if role is Role.CLIENT else pair.server_sends
    for name in ["ping", "pong"]:
        assert send(sample(name)) == []  # the receiving core answers or absorbs them
    names = ["credit", "eof", "error"] if role is Role.CLIENT else ["credit", "error"]
    for name in names:  # (a server sends no eof on an exec stream)
        assert send(sample(name)) == [sample(name)]


def test_client_may_not_send_output_data() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(LocalProtocolError, match="a client may not send on channel 1"):
        pair.client.send_data(1, 1, b"x")
    with pytest.raises(LocalProtocolError, match="a client may not send on channel 2"):
        pair.client.send(Eof(channel=2, stream=1))


# --- the handshake ---------------------------------------------------------------------------

STREAM_TRAFFIC = {
    "exec": wire(Exec(argv=["x"], stream=1)),
    "ping": wire(Ping()),
    "pong": wire(Pong()),
    "data": raw_data(1, 0, b"x"),
    "eof": wire(Eof(stream=1)),
    "credit": wire(Credit(size=1, stream=1)),
}


@pytest.mark.parametrize("raw", STREAM_TRAFFIC.values(), ids=STREAM_TRAFFIC.keys())
@pytest.mark.parametrize("after_hello", [False, True])
def test_server_rejects_traffic_before_the_handshake(raw: bytes, after_hello: bool) -> None:
    server = Connection(Role.SERVER)
    if after_hello:
        assert events_from(server, wire(Hello(versions=[1]))) == [Hello(versions=[1])]
    with pytest.raises(RemoteProtocolError, match="before the handshake finished"):
        events_from(server, raw)


@pytest.mark.parametrize(
    "raw",
    [wire(Started(pid=1, stream=1)), raw_data(1, 1, b"x"), wire(Ping())],
    ids=["started", "data", "ping"],
)
def test_client_rejects_traffic_before_the_welcome(raw: bytes) -> None:
    pair = Pair()
    pair.client_sends(Hello(versions=[1]))
    with pytest.raises(RemoteProtocolError, match="before the handshake finished"):
        pair.to_client(raw)


def test_a_second_hello_is_rejected() -> None:
    pair = Pair()
    pair.client_sends(Hello(versions=[1]))
    with pytest.raises(RemoteProtocolError, match="a second hello"):
        pair.to_server(wire(Hello(versions=[1])))


def test_a_hello_after_the_handshake_is_rejected() -> None:
    pair = handshaken_pair()
    with pytest.raises(RemoteProtocolError, match="a second hello"):
        pair.to_server(wire(Hello(versions=[1])))


@pytest.mark.parametrize("user", ["../etc", "a" * 33, "-rf", "build\x1b[2J", "b uild", "é"])
def test_a_hello_or_welcome_naming_no_unix_account_is_rejected(user: str) -> None:
    """hello.user and welcome.user reach logs and terminals: only account names are carried."""
    pair = Pair()
    with pytest.raises(RemoteProtocolError, match=r"hello\.user is not a Unix account name"):
        pair.to_server(wire(Hello(versions=[1], user=user)))
    pair = Pair()
    pair.client_sends(Hello(versions=[1]))
    with pytest.raises(RemoteProtocolError, match=r"welcome\.user is not a Unix account name"):
        pair.to_client(wire(Welcome(version=1, user=user)))


@pytest.mark.parametrize("user", ["build", "_svc", "deploy-2", "a.b", "x" * 32])
def test_a_hello_naming_an_account_is_accepted(user: str) -> None:
    pair = Pair()
    assert pair.client_sends(Hello(versions=[1], user=user)) == [Hello(versions=[1], user=user)]
    assert pair.server_sends(Welcome(version=1, user=user)) == [Welcome(version=1, user=user)]


@pytest.mark.parametrize("version", [0, 2, max(PROTOCOL_VERSIONS) + 1, -1, 2**70])
def test_welcome_with_a_version_not_offered(version: int) -> None:
    pair = Pair()
    pair.client_sends(Hello(versions=list(PROTOCOL_VERSIONS)))
    with pytest.raises(RemoteProtocolError, match=f"server chose version {version}, not offered"):
        pair.to_client(wire(Welcome(version=version)))


def test_welcome_must_be_a_version_this_client_offered() -> None:
    pair = Pair()
    pair.client_sends(Hello(versions=[]))
    with pytest.raises(RemoteProtocolError, match="server chose version 1, not offered"):
        pair.to_client(wire(Welcome(version=1)))


def test_server_may_only_welcome_with_an_offered_version() -> None:
    pair = Pair()
    pair.client_sends(Hello(versions=[1]))
    with pytest.raises(LocalProtocolError, match="version 2"):
        pair.server.send(Welcome(version=2))
    assert pair.server.state is State.HANDSHAKE
    assert pair.server_sends(Welcome(version=1)) == [Welcome(version=1)]


def test_welcome_before_hello_and_a_second_welcome_are_rejected() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(RemoteProtocolError, match="an unexpected welcome"):
        events_from(client, wire(Welcome(version=1)))
    pair = handshaken_pair()
    with pytest.raises(RemoteProtocolError, match="an unexpected welcome"):
        pair.to_client(wire(Welcome(version=1)))


def test_local_handshake_misuse() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="welcome only answers a hello"):
        pair.server.send(Welcome(version=1))
    with pytest.raises(LocalProtocolError, match="connection is not open"):
        pair.client.send(Exec(argv=["x"], stream=1))
    with pytest.raises(LocalProtocolError, match="before the handshake finished"):
        pair.client.send(Ping())
    pair.client_sends(Hello(versions=[1]))
    with pytest.raises(LocalProtocolError, match="hello was already sent"):
        pair.client.send(Hello(versions=[1]))
    pair.server_sends(Welcome(version=1))
    with pytest.raises(LocalProtocolError, match="welcome only answers a hello"):
        pair.server.send(Welcome(version=1))


# --- stream ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [raw_data(5, 0, b"x"), wire(Eof(stream=5)), wire(Credit(size=1, stream=5)),
     wire(Close(stream=5)), wire(Signal(name="INT", stream=2**32 - 1))],
    ids=["data", "eof", "credit", "close", "signal-max-id"],
)
def test_frames_for_a_stream_never_opened(raw: bytes) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match="unknown stream"):
        pair.to_server(raw)


@pytest.mark.parametrize(
    "raw",
    [raw_data(1, 0, b"x"), wire(Eof(stream=1)), wire(Close(stream=1)),
     wire(Exec(argv=["x"], stream=1))],
    ids=["data", "eof", "close", "reopen"],
)
def test_frames_for_a_retired_stream_reach_the_server(raw: bytes) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Exit(status=0, stream=1))
    pair.client_sends(Close(stream=1))
    assert not pair.server.is_open(1)
    with pytest.raises(RemoteProtocolError, match=r"closed stream 1|above 1"):
        pair.to_server(raw)


@pytest.mark.parametrize(
    "raw",
    [raw_data(1, 1, b"x"), wire(Exit(status=0, stream=1)), wire(Started(pid=1, stream=1))],
    ids=["data", "exit", "started"],
)
def test_frames_for_a_retired_stream_reach_the_client(raw: bytes) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Exit(status=0, stream=1))
    pair.client_sends(Close(stream=1))
    with pytest.raises(RemoteProtocolError, match="closed stream 1"):
        pair.to_client(raw)


@pytest.mark.parametrize("stream", [2, 4, 2**32 - 2])
def test_even_stream_ids_are_rejected(stream: int) -> None:
    pair = handshaken_pair()
    with pytest.raises(RemoteProtocolError, match=f"stream id {stream} must be odd"):
        pair.to_server(wire(Exec(argv=["x"], stream=stream)))


def test_opening_on_stream_zero_is_rejected() -> None:
    pair = handshaken_pair()
    with pytest.raises(RemoteProtocolError, match="'exec' needs a stream id"):
        pair.to_server(wire(Exec(argv=["x"], stream=0)))


def test_connection_messages_on_a_stream_are_rejected() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match="'ping' belongs on stream 0"):
        pair.to_server(wire(Ping(stream=1)))


def test_data_on_stream_zero_is_rejected() -> None:
    pair = handshaken_pair()
    with pytest.raises(RemoteProtocolError, match="data on stream 0"):
        pair.to_server(raw_data(0, 0, b"x"))


@pytest.mark.parametrize(("first", "second"), [(3, 1), (3, 3), (7, 5)])
def test_stream_ids_must_increase(first: int, second: int) -> None:
    pair = handshaken_pair()
    pair.to_server(wire(Exec(argv=["x"], stream=first)))
    with pytest.raises(RemoteProtocolError, match=f"must be odd and above {first}"):
        pair.to_server(wire(Exec(argv=["x"], stream=second)))


def test_stream_ids_may_skip() -> None:
    pair = handshaken_pair()
    assert pair.to_server(wire(Get(path="a", stream=9))) == [Get(path="a", stream=9)]


def test_local_stream_id_rules() -> None:
    pair = handshaken_pair()
    with pytest.raises(LocalProtocolError, match="only the client opens streams"):
        pair.server.next_stream_id()
    with pytest.raises(LocalProtocolError, match="must be odd"):
        pair.client.send(Exec(argv=["x"], stream=2))
    pair.client_sends(Exec(argv=["x"], stream=5))
    with pytest.raises(LocalProtocolError, match="above 5"):
        pair.client.send(Exec(argv=["x"], stream=3))
    with pytest.raises(LocalProtocolError, match="stream 3 is not open"):
        pair.client.send(Eof(stream=3))
    with pytest.raises(LocalProtocolError, match="'ping' belongs on stream 0"):
        pair.client.send(Ping(stream=5))
    with pytest.raises(LocalProtocolError, match="'eof' needs a stream id"):
        pair.client.send(Eof(stream=0))


def test_stream_ids_beyond_the_wire_range_are_a_local_error() -> None:
    pair = handshaken_pair()
    with pytest.raises(LocalProtocolError, match="stream id"):
        pair.client.send(Exec(argv=["x"], stream=2**32 + 1))
    assert pair.client.open_streams == 0
    assert pair.client.next_stream_id() == 1
    top = 2**32 - 1
    assert pair.client_sends(Exec(argv=["x"], stream=top)) == [Exec(argv=["x"], stream=top)]
    with pytest.raises(LocalProtocolError, match="stream id"):
        pair.client.send(Exec(argv=["x"], stream=pair.client.next_stream_id()))


# --- channels and eof ------------------------------------------------------------------------


def test_a_server_sends_no_eof_on_an_exec_stream() -> None:
    """The end of a command's output is its exit (PROTOCOL.md, "Channels")."""
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(LocalProtocolError, match="a server may not send 'eof' on an exec"):
        pair.server.send(Eof(channel=1, stream=1))
    assert pair.server_data(1, 2, b"still fine") == [Data(1, 2, b"still fine")]
    with pytest.raises(RemoteProtocolError, match="a server may not send 'eof' on an exec"):
        pair.to_client(wire(Eof(channel=1, stream=1)))


def test_client_data_after_its_eof_is_rejected() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.client_sends(Eof(channel=0, stream=1))
    with pytest.raises(RemoteProtocolError, match="data on channel 0 after its eof"):
        pair.to_server(raw_data(1, 0, b"late"))


def test_local_data_after_eof_is_refused() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.client_sends(Eof(channel=0, stream=1))
    with pytest.raises(LocalProtocolError, match="channel 0 of stream 1 already ended"):
        pair.client.send_data(1, 0, b"late")


# --- flow control ----------------------------------------------------------------------------


def fill_window(pair: Pair, stream: int) -> None:
    """Send a whole initial window of data from client to server, in MAX_BODY frames."""
    chunk = payload(MAX_BODY)
    for _ in range(INITIAL_WINDOW // MAX_BODY):
        assert pair.client_data(stream, 0, chunk) == [Data(stream, 0, chunk)]


def test_window_is_initial_window_and_shrinks_with_data() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    assert pair.client.send_window(1) == pair.server.send_window(1) == INITIAL_WINDOW
    pair.client_data(1, 0, b"12345")
    assert pair.client.send_window(1) == INITIAL_WINDOW - 5
    assert pair.server.send_window(1) == INITIAL_WINDOW
    assert pair.client.send_window(99) == 0


def test_data_beyond_the_window_is_rejected() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    fill_window(pair, 1)
    assert pair.client.send_window(1) == 0
    with pytest.raises(RemoteProtocolError, match="stream 1 exceeded its flow-control window"):
        pair.to_server(raw_data(1, 0, b"x"))


def test_local_data_without_credit_is_refused() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    fill_window(pair, 1)
    with pytest.raises(LocalProtocolError, match="stream 1 has only 0 credit"):
        pair.client.send_data(1, 0, b"x")
    with pytest.raises(LocalProtocolError, match=f"data chunk of {MAX_BODY + 1} bytes"):
        pair.client.data_prefix(1, 0, MAX_BODY + 1)


def test_consumed_grants_credit_at_the_threshold() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.client_data(1, 0, payload(CREDIT_THRESHOLD))
    pair.server.consumed(1, CREDIT_THRESHOLD - 1)
    assert pair.server.data_to_send() == b""
    pair.server.consumed(1, 1)
    frame = pair.server.data_to_send()
    assert frame
    assert pair.to_client(frame) == [Credit(size=CREDIT_THRESHOLD, stream=1)]
    assert pair.client.send_window(1) == INITIAL_WINDOW
    pair.server.consumed(1, 0)
    assert pair.server.data_to_send() == b""


def test_credit_restores_the_window() -> None:
    pair = handshaken_pair(window_budget=INITIAL_WINDOW)  # a fixed window: no probe rides along
    pair.open_exec()
    fill_window(pair, 1)
    granted = 0
    for _ in range(INITIAL_WINDOW // MAX_BODY):
        pair.server.consumed(1, MAX_BODY)
        frame = pair.server.data_to_send()
        if frame:
            (credit,) = pair.to_client(frame)
            assert isinstance(credit, Credit)
            granted += credit.size
    assert granted == INITIAL_WINDOW and pair.client.send_window(1) == INITIAL_WINDOW
    fill_window(pair, 1)  # the server accepts a second full window
    with pytest.raises(RemoteProtocolError, match="exceeded its flow-control window"):
        pair.to_server(raw_data(1, 0, b"x"))


def test_credit_sent_by_hand_is_accounted_for() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    assert pair.server_sends(Credit(size=10, stream=1)) == [Credit(size=10, stream=1)]
    assert pair.client.send_window(1) == INITIAL_WINDOW + 10
    fill_window(pair, 1)
    assert pair.client.send_window(1) == 10
    assert pair.client_data(1, 0, b"0123456789") == [Data(1, 0, b"0123456789")]


@pytest.mark.parametrize("size", [0, -1, -(2**40), MAX_CREDIT + 1, 2**64])
def test_credit_out_of_range_is_rejected(size: int) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError, match=f"credit of {size} is out of range"):
        pair.to_client(wire(Credit(size=size, stream=1)))


def test_credit_overflowing_max_credit_in_total_is_rejected() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    room = MAX_CREDIT - INITIAL_WINDOW
    assert pair.to_client(wire(Credit(size=room, stream=1))) == [Credit(size=room, stream=1)]
    assert pair.client.send_window(1) == MAX_CREDIT
    with pytest.raises(RemoteProtocolError, match="credit of 1 is out of range"):
        pair.to_client(wire(Credit(size=1, stream=1)))


@pytest.mark.parametrize("size", [0, -5])
def test_local_credit_out_of_range_is_refused(size: int) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(LocalProtocolError, match="credit"):
        pair.server.send(Credit(size=size, stream=1))


@pytest.mark.parametrize("size", [0, -1, -MAX_BODY])
def test_bad_data_size_leaves_the_window_alone(size: int) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(LocalProtocolError, match=f"data chunk of {size} bytes"):
        pair.client.data_prefix(1, 0, size)
    assert pair.client.send_window(1) == INITIAL_WINDOW


# --- final messages ------------------------------------------------------------------------


def test_in_flight_frames_after_a_local_close_are_dropped() -> None:
    pair = handshaken_pair()
    pair.open_exec(started=False)
    pair.client_sends(Close(stream=1))  # the client abandons the stream
    assert not pair.client.can_send(1)
    in_flight = [
        pair.server.send(Started(pid=1, stream=1)),
        pair.server.send_data(1, 1, b"output nobody wants"),
        pair.server.send(Credit(size=100, stream=1)),
        pair.server.send_data(1, 2, b"more: the stream is gone for us"),
    ]
    for raw in in_flight:
        assert pair.to_client(raw) == []
    assert pair.server_sends(Exit(status=None, signal=9, stream=1)) == [
        Exit(status=None, signal=9, stream=1)
    ]
    assert pair.client.open_streams == 0


def test_in_flight_frames_after_a_local_exit_are_dropped() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Exit(status=0, stream=1))
    for raw in [raw_data(1, 0, b"stdin"), wire(Eof(stream=1)), wire(Signal(name="INT", stream=1)),
                wire(Credit(size=1, stream=1))]:
        assert pair.to_server(raw) == []
    assert pair.client_sends(Close(stream=1)) == [Close(stream=1)]
    assert pair.server.open_streams == 0


def test_dropped_data_still_counts_against_the_window() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Exit(status=0, stream=1))
    chunk = payload(MAX_BODY)
    for _ in range(INITIAL_WINDOW // MAX_BODY):
        assert pair.to_server(raw_data(1, 0, chunk)) == []
    with pytest.raises(RemoteProtocolError, match="exceeded its flow-control window"):
        pair.to_server(raw_data(1, 0, b"x"))


@pytest.mark.parametrize(
    "raw",
    [raw_data(1, 1, b"x"), wire(Started(pid=1, stream=1)), wire(Eof(channel=1, stream=1)),
     wire(Credit(size=1, stream=1)), wire(Exit(status=0, stream=1)),
     wire(Error(code="failed", message="x", stream=1))],
    ids=["data", "started", "eof", "credit", "exit", "error"],
)
def test_frames_after_the_peers_final_message_are_errors(raw: bytes) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Exit(status=0, stream=1))
    with pytest.raises(RemoteProtocolError, match="frame on stream 1 after its final message"):
        pair.to_client(raw)


def test_local_sends_after_a_local_final_are_refused() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Exit(status=0, stream=1))
    with pytest.raises(LocalProtocolError, match="stream 1 is not open for sending"):
        pair.server.send(Exit(status=0, stream=1))
    with pytest.raises(LocalProtocolError, match="stream 1 is not open for sending"):
        pair.server.send_data(1, 1, b"x")
    assert pair.server.send_window(1) == 0
    pair.server.consumed(1, CREDIT_THRESHOLD)
    assert pair.server.data_to_send() == b""


def test_a_message_too_big_to_send_changes_no_state() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    huge = Error(code="failed", message="x" * (70 * 1024), stream=1)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        pair.server.send(huge)
    assert pair.server.can_send(1)  # nothing was sent, so the stream did not end
    assert pair.server_sends(Exit(status=0, stream=1)) == [Exit(status=0, stream=1)]
    with pytest.raises(LocalProtocolError, match="exceeds"):
        pair.client.send(Exec(argv=["x" * (70 * 1024)], stream=3))
    assert not pair.client.is_open(3) and pair.client.next_stream_id() == 3


def test_a_value_json_cannot_carry_is_a_local_error() -> None:
    pair = handshaken_pair()
    with pytest.raises(LocalProtocolError, match="JSON"):
        pair.client.send(Exec(argv=["sleep", "1"], timeout=float("inf"), stream=1))
    assert pair.client.open_streams == 0


# --- after a violation -----------------------------------------------------------------------


def test_a_failed_connection_stays_failed() -> None:
    pair = handshaken_pair()
    with pytest.raises(RemoteProtocolError):
        pair.to_server(raw_msg({"t": "nope"}))
    pair.server.receive_data(wire(Ping()))
    with pytest.raises(RemoteProtocolError, match="connection already failed"):
        pair.server.next_event()


def test_after_a_violation_only_one_stream_zero_error_may_be_sent() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(RemoteProtocolError):
        pair.to_server(raw_msg({"t": "nope"}))
    with pytest.raises(LocalProtocolError, match="only a stream-0 error"):
        pair.server.send(Started(pid=1, stream=1))
    with pytest.raises(LocalProtocolError, match="only a stream-0 error"):
        pair.server.send(Error(code="failed", message="just this stream", stream=1))
    with pytest.raises(LocalProtocolError, match="only a stream-0 error"):
        pair.server.send_data(1, 1, b"x")
    pair.server.consumed(1, CREDIT_THRESHOLD)
    assert pair.server.data_to_send() == b""
    fatal = Error(code="protocol", message="unknown message type 'nope'")
    assert pair.server_sends(fatal) == [fatal]
    assert pair.client.state is State.CLOSED
    with pytest.raises(LocalProtocolError, match="fatal error was already sent"):
        pair.server.send(fatal)


def test_nothing_is_sent_after_a_fatal_error() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.client_sends(Error(code="failed", message="bye"))
    for msg in [Ping(), Close(stream=1), Error(code="failed", message="again")]:
        with pytest.raises(LocalProtocolError, match="fatal error was already sent"):
            pair.client.send(msg)
    with pytest.raises(LocalProtocolError, match="fatal error was already sent"):
        pair.client.send_data(1, 0, b"x")


@pytest.mark.parametrize(
    "raw", [raw_data(1, 1, b"x"), wire(Started(pid=1, stream=1)), wire(Ping())],
    ids=["data", "started", "ping"],
)
def test_frames_after_the_peers_fatal_error_are_rejected_as_such(raw: bytes) -> None:
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_sends(Error(code="shutting_down", message="server shutting down"))
    assert pair.client.state is State.CLOSED
    with pytest.raises(RemoteProtocolError, match="after the connection was closed"):
        pair.to_client(raw)


def test_consuming_a_negative_size_is_refused() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    with pytest.raises(LocalProtocolError, match="cannot consume -1 bytes"):
        pair.server.consumed(1, -1)


def test_events_are_returned_one_at_a_time() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    first, second = Signal(name="INT", stream=1), Signal(name="TERM", stream=1)
    pair.server.receive_data(wire(first) + wire(second))
    assert pair.server.next_event() == first
    assert pair.server.next_event() == second
    assert pair.server.next_event() is NEED_DATA

