"""A client may send its first requests right behind its hello (docs/PROTOCOL.md, "Pipelining");
the server's state machine reads them once it has sent welcome, and never before."""

from __future__ import annotations

import pytest
from protocol_helpers import Pair, events_from

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol import Data, Eof, Error, Exec, Hello, Started, Welcome
from tether.protocol.connection import State

HELLO = Hello(versions=[1])
EXEC = Exec(argv=["true"], stream=1)


def test_a_request_behind_the_hello_is_read_after_the_welcome() -> None:
    pair = Pair()
    flight = pair.client.send(HELLO) + pair.client.send(EXEC)
    flight += pair.client.send_data(1, 0, b"stdin") + pair.client.send(Eof(channel=0, stream=1))
    assert pair.client.state is State.HANDSHAKE
    pair.server.receive_data(flight)
    assert pair.server.next_event() == HELLO  # the server decides before it reads on
    welcome = pair.server.send(Welcome(version=1))
    assert events_from(pair.server) == [EXEC, Data(1, 0, b"stdin"), Eof(channel=0, stream=1)]
    assert events_from(pair.client, welcome) == [Welcome(version=1)]
    assert pair.client.state is State.OPEN and pair.client.is_open(1)


def test_a_server_that_has_not_welcomed_refuses_a_request() -> None:
    pair = Pair()
    pair.server.receive_data(pair.client.send(HELLO) + pair.client.send(EXEC))
    assert pair.server.next_event() == HELLO
    with pytest.raises(RemoteProtocolError, match="before the handshake finished"):
        pair.server.next_event()


def test_nothing_but_hello_may_lead() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="not open"):
        pair.client.send(EXEC)
    with pytest.raises(LocalProtocolError, match="not open for sending"):
        pair.client.data_prefix(1, 0, 1)


def test_a_refusal_ends_the_pipelined_stream_with_the_connection() -> None:
    pair = Pair()
    pair.server.receive_data(pair.client.send(HELLO) + pair.client.send(EXEC))
    assert pair.server.next_event() == HELLO
    refusal = pair.server.send(Error(code="not_authorized", message="no"))
    assert events_from(pair.client, refusal) == [Error(code="not_authorized", message="no")]
    assert pair.client.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send(Exec(argv=["true"], stream=3))


def test_the_server_may_not_pipeline() -> None:
    pair = Pair()
    pair.client_sends(HELLO)
    with pytest.raises(LocalProtocolError, match="not open"):
        pair.server.send(Started(pid=1, stream=1))
