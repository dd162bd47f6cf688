"""The forwarding operations' tables (``connect``, ``listen``) and their openers' value checks,
through a client and a server core with no sockets (the exhaustive per-state checks are in
test_streams.py, which picks both tables up from OPENERS)."""

from __future__ import annotations

import pytest
from protocol_helpers import events_from, handshaken_pair, wire
from test_streams import STREAM, refused_both_ways, scripted, step

from tether.errors import LocalProtocolError
from tether.protocol.forwarding import Connect, Connected, Incoming, Listen, Listening
from tether.protocol.messages import Close, Credit, Data, Done, Eof, Error, Refused, Role
from tether.protocol.records import replace

C, S = Role.CLIENT, Role.SERVER
CONNECT = Connect(host="db.internal", port=5432)


def test_connect_carries_bytes_both_ways_and_each_direction_ends_on_its_own() -> None:
    pair = scripted(CONNECT)
    # the client may send before the server connected (the server holds it within the window)
    assert pair.client_data(STREAM, 0, b"early") == [Data(STREAM, 0, b"early")]
    with pytest.raises(LocalProtocolError, match="channel 0 of a connect stream"):
        pair.server.send_data(STREAM, 0, b"before connected")
    assert step(pair, S, "connected", None) == [Connected(host="10.0.0.5", port=5432,
                                                          stream=STREAM)]
    assert pair.server_data(STREAM, 0, b"reply") == [Data(STREAM, 0, b"reply")]
    # half-close: the client's direction ends, the server's goes on
    assert step(pair, C, "eof", 0) == [Eof(channel=0, stream=STREAM)]
    with pytest.raises(LocalProtocolError, match=r"after its eof|already ended"):
        pair.client.send_data(STREAM, 0, b"after eof")
    assert pair.server_data(STREAM, 0, b"more") == [Data(STREAM, 0, b"more")]
    assert pair.client_sends(Credit(size=5, stream=STREAM)) == [Credit(size=5, stream=STREAM)]
    assert step(pair, S, "eof", 0) == [Eof(channel=0, stream=STREAM)]
    assert pair.server_sends(Done(stream=STREAM)) == [Done(stream=STREAM)]
    assert pair.client_sends(Close(stream=STREAM)) == [Close(stream=STREAM)]
    assert pair.client.states(STREAM) is None and pair.server.states(STREAM) is None


def test_connect_table_refusals() -> None:
    refused_both_ways(CONNECT, [], S, Done(stream=STREAM), "may not send 'done' on a connect")
    refused_both_ways(CONNECT, [], S, Eof(channel=0, stream=STREAM),
                      "may not send 'eof' on a connect")
    connected = [(S, "connected", None)]
    refused_both_ways(CONNECT, connected, S, Connected(stream=STREAM),
                      "may not send 'connected' on a connect")
    refused_both_ways(CONNECT, connected, S, Incoming(id=1, stream=STREAM),
                      "may not send 'incoming' on a connect")
    refused_both_ways(CONNECT, [*connected, (S, "eof", 0)], S, Eof(channel=0, stream=STREAM),
                      "may not send 'eof' on a connect")
    refused_both_ways(CONNECT, [(C, "eof", 0)], C, Eof(channel=0, stream=STREAM),
                      "may not send 'eof' on a connect")
    refused_both_ways(CONNECT, connected, S, Eof(channel=1, stream=STREAM),
                      "channel 1 of a connect")


def test_a_refused_destination_is_a_stream_error_and_the_connection_goes_on() -> None:
    pair = scripted(CONNECT, (C, "data", 0))
    refusal = Error(code="failed", message="connection refused", stream=STREAM)
    assert pair.server_sends(refusal) == [refusal]
    assert pair.client_sends(Close(stream=STREAM)) == [Close(stream=STREAM)]
    assert pair.open_exec() == 3


def test_listen_announces_connections_until_closed() -> None:
    listen = Listen(port=0)
    pair = scripted(listen)
    refused_both_ways(listen, [], S, Incoming(id=1, stream=STREAM),
                      "may not send 'incoming' on a listen")
    bound = Listening(host="127.0.0.1", port=40123, stream=STREAM)
    assert pair.server_sends(bound) == [bound]
    first = Incoming(id=1, origin="127.0.0.1:5000", stream=STREAM)
    assert pair.server_sends(first) == [first]
    # the client takes it on a stream of its own, while the listener stays open
    take = Connect(listener=STREAM, incoming=1, stream=3)
    assert pair.client_sends(take) == [take]
    assert pair.server_sends(Connected(stream=3)) == [Connected(stream=3)]
    with pytest.raises(LocalProtocolError, match="channel 0 of a listen"):
        pair.server.send_data(STREAM, 0, b"no data on a listener")
    refused_both_ways(listen, [(S, "listening", None)], C, Credit(size=1, stream=STREAM),
                      "may not send 'credit' on a listen")
    assert pair.client_sends(Close(stream=STREAM)) == [Close(stream=STREAM)]
    assert pair.server_sends(Done(stream=STREAM)) == [Done(stream=STREAM)]
    assert pair.server.states(STREAM) is None
    assert pair.server.states(3) is not None  # the connection outlives its listener


@pytest.mark.parametrize("opener, reason", [
    (Connect(), "exactly one of"),
    (Connect(host="a", port=1, path="/s"), "exactly one of"),
    (Connect(host="a", port=0), "not a port number"),
    (Connect(host="a", port=65536), "not a port number"),
    (Connect(port=22), "host is empty"),
    (Connect(host="a b", port=22), "not a host name"),
    (Connect(host="x" * 256, port=22), "not a host name"),
    (Connect(path="/" + "s" * 107), "not a Unix socket path"),
    (Connect(path="/a\0b"), "not a Unix socket path"),
    (Connect(listener=1, incoming=0), "must both be positive"),
    (Connect(host="a", port=1, origin="o" * 129), "origin is too long"),
    (Listen(port=-1), "not a port number"),
    (Listen(port=70000), "not a port number"),
    (Listen(host="h", path="/s"), "either host and port or path"),
    (Listen(host="bad\nhost", port=1), "not a host name"),
])
def test_a_malformed_forwarding_request_is_refused_not_fatal(opener: Connect | Listen,
                                                             reason: str) -> None:
    pair = handshaken_pair()
    (refused,) = pair.client_sends(replace(opener, stream=STREAM))
    assert isinstance(refused, Refused) and reason in refused.reason
    answer = Error(code="bad_request", message=refused.reason, stream=STREAM)
    assert pair.server_sends(answer) == [answer]
    assert pair.client_sends(Close(stream=STREAM)) == [Close(stream=STREAM)]
    assert pair.open_exec() == 3


def test_an_incoming_without_an_id_is_a_protocol_error() -> None:
    from tether.errors import RemoteProtocolError

    pair = scripted(Listen(port=0), (S, "listening", None))
    with pytest.raises(RemoteProtocolError, match=r"incoming\.id must be positive"):
        events_from(pair.client, wire(Incoming(id=0, stream=STREAM)))
