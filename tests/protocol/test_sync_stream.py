"""The ``sync`` operation's table and request window (docs/PROTOCOL.md, "Sync"), through a real
client and server core: a push and a pull as a user's sync makes them, the file list's window
(at most 8 sync_lists unanswered, enforced by the receiver and refused to a sender), and the
values checked as a message arrives."""

from __future__ import annotations

import pytest
from protocol_helpers import Pair, handshaken_pair, raw_data, wire

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.messages import (
    Close,
    Data,
    Done,
    Refused,
)
from tether.protocol.records import replace
from tether.protocol.sync_messages import (
    LIST_WINDOW,
    MAX_LIST,
    Sync,
    SyncBatch,
    SyncCommit,
    SyncDeleted,
    SyncFile,
    SyncList,
    SyncListed,
    SyncSent,
    SyncWant,
)

STREAM = 1
HASH = "blake3:" + "0" * 64


def listing(count: int = 2, **fields: object) -> SyncList:
    spec: dict[str, object] = dict(
        names=[f"f{i}" for i in range(count)], kinds=["file"] * count, sizes=[3] * count,
        modes=[0o644] * count, mtimes=[1] * count, targets=[""] * count, hashes=[""] * count,
        stream=STREAM)
    spec.update(fields)
    return SyncList(**spec)  # type: ignore[arg-type]


def want(**fields: object) -> SyncWant:
    spec: dict[str, object] = dict(actions=["send", ""], wanted=[0], sigs=[0], offsets=[0],
                                   prefixes=[""], stream=STREAM)
    spec.update(fields)
    return SyncWant(**spec)  # type: ignore[arg-type]


def opened(push: bool) -> Pair:
    pair = handshaken_pair()
    pair.client_sends(Sync(path="dest", push=push, stream=STREAM))
    return pair


def test_a_push_as_a_sync_makes_it() -> None:
    pair = opened(push=True)
    assert pair.client_sends(listing()) == [listing()]
    assert pair.server_sends(want(sigs=[40])) == [want(sigs=[40])]
    assert pair.server_data(STREAM, 0, b"s" * 40) == [Data(STREAM, 0, b"s" * 40)]
    assert pair.client_sends(SyncListed(count=2, stream=STREAM))
    assert pair.client_sends(SyncFile(index=0, size=3, delta=True, stream=STREAM))
    assert pair.client_data(STREAM, 0, b"abc") == [Data(STREAM, 0, b"abc")]
    assert pair.client_sends(SyncCommit(index=0, hash=HASH, stream=STREAM))
    assert pair.client_sends(SyncBatch(indices=[1], sizes=[3], hashes=[HASH], stream=STREAM))
    assert pair.client_data(STREAM, 0, b"def")
    assert pair.client_sends(SyncSent(stream=STREAM))
    assert pair.server_sends(SyncDeleted(names=["old"], stream=STREAM))
    assert pair.server_sends(Done(path="dest", stream=STREAM))
    assert pair.client_sends(Close(stream=STREAM))
    assert pair.client.open_streams == pair.server.open_streams == 0


def test_a_pull_as_a_sync_makes_it() -> None:
    pair = opened(push=False)
    assert pair.server_sends(listing())
    assert pair.client_sends(want(sigs=[20]))
    assert pair.client_data(STREAM, 0, b"s" * 20)
    assert pair.server_sends(SyncListed(count=2, stream=STREAM))
    assert pair.server_sends(SyncFile(index=0, size=3, stream=STREAM))
    assert pair.server_data(STREAM, 0, b"abc")
    assert pair.server_sends(SyncCommit(index=0, hash=HASH, stream=STREAM))
    assert pair.server_sends(Done(path="", stream=STREAM))
    assert pair.client_sends(Close(stream=STREAM))
    assert pair.client.open_streams == pair.server.open_streams == 0


@pytest.mark.parametrize(("push", "msg", "match"), [
    (True, want(), "a client may not send 'sync_want' on a sync stream .*listing"),
    (True, SyncDeleted(names=[], stream=STREAM), "a client may not send 'sync_deleted'"),
    (False, listing(), "a client may not send 'sync_list' on a sync stream .*answering"),
    (False, SyncSent(stream=STREAM), "a client may not send 'sync_sent' on a sync stream"),
    (True, SyncSent(stream=STREAM), "may not send 'sync_sent' on a sync stream .*listing"),
])
def test_a_client_message_out_of_its_table_is_refused_both_ways(push: bool, msg: object,
                                                                 match: str) -> None:
    pair = opened(push)
    with pytest.raises(LocalProtocolError, match=match):
        pair.client.send(msg)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match=match):
        pair.to_server(wire(msg))  # type: ignore[arg-type]


@pytest.mark.parametrize(("push", "msg", "match"), [
    (True, listing(), "a server may not send 'sync_list' on a sync stream .*answering"),
    (False, want(), "a server may not send 'sync_want' on a sync stream .*listing"),
    (False, SyncDeleted(names=[], stream=STREAM), "a server may not send 'sync_deleted'"),
])
def test_a_server_message_out_of_its_table_is_refused_both_ways(push: bool, msg: object,
                                                                 match: str) -> None:
    pair = opened(push)
    with pytest.raises(LocalProtocolError, match=match):
        pair.server.send(msg)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match=match):
        pair.to_client(wire(msg))  # type: ignore[arg-type]


def test_nothing_after_sync_sent_but_close() -> None:
    pair = opened(push=True)
    pair.client_sends(SyncListed(count=0, stream=STREAM))
    pair.client_sends(SyncSent(stream=STREAM))
    with pytest.raises(RemoteProtocolError, match=r"sync stream .*sent"):
        pair.to_server(raw_data(STREAM, 0, b"late"))
    pair = opened(push=True)
    pair.client_sends(SyncListed(count=0, stream=STREAM))
    pair.client_sends(SyncSent(stream=STREAM))
    with pytest.raises(RemoteProtocolError, match="may not send 'sync_file'"):
        pair.to_server(wire(SyncFile(index=0, size=1, stream=STREAM)))


def test_no_list_after_the_listing_ended() -> None:
    pair = opened(push=True)
    pair.client_sends(SyncListed(count=2, stream=STREAM))
    with pytest.raises(RemoteProtocolError, match=r"may not send .sync_list. .*sending"):
        pair.to_server(wire(listing()))


@pytest.mark.parametrize("push", [True, False])
def test_the_list_window_is_enforced_by_the_receiver(push: bool) -> None:
    """A source floods lists without waiting for answers: the receiving core refuses the
    ninth, so a destination never holds more than 8 lists' worth of work."""
    pair = opened(push)
    deliver = pair.to_server if push else pair.to_client
    for _ in range(LIST_WINDOW):
        deliver(wire(listing()))
    with pytest.raises(RemoteProtocolError, match=f"more than {LIST_WINDOW} sync_list"):
        deliver(wire(listing()))


@pytest.mark.parametrize("push", [True, False])
def test_the_list_window_moves_with_the_answers(push: bool) -> None:
    pair = opened(push)
    source_sends = pair.client_sends if push else pair.server_sends
    dest_sends = pair.server_sends if push else pair.client_sends
    source = pair.client if push else pair.server
    for _ in range(LIST_WINDOW):
        source_sends(listing())
    with pytest.raises(LocalProtocolError, match=f"more than {LIST_WINDOW} sync_list"):
        source.send(listing())
    dest_sends(want())
    assert source_sends(listing()) == [listing()]  # one answered: one more may go
    for _ in range(LIST_WINDOW):
        dest_sends(want())
    for _ in range(LIST_WINDOW):
        source_sends(listing())


@pytest.mark.parametrize(("msg", "reason"), [
    (listing(sizes=[3]), "lists differ in length"),
    (listing(count=0), "must hold 1 to"),
    (listing(count=MAX_LIST + 1), "must hold 1 to"),
    (listing(sizes=[-1, 3]), "negative size"),
    (SyncBatch(indices=[1, 2], sizes=[1], hashes=[HASH], stream=STREAM), "differ in length"),
    (SyncBatch(indices=[1], sizes=[5 * 1024 * 1024], hashes=[HASH], stream=STREAM), "exceeds"),
])
def test_a_bad_list_or_batch_is_a_protocol_error(msg: object, reason: str) -> None:
    pair = opened(push=True)
    with pytest.raises(RemoteProtocolError, match=reason):
        pair.to_server(wire(msg))  # type: ignore[arg-type]


@pytest.mark.parametrize(("msg", "reason"), [
    (want(sigs=[]), "differ in length"),
    (want(wanted=[-1]), "negative number"),
    (want(actions=["send"] * (MAX_LIST + 1)), "answers more entries"),
])
def test_a_bad_want_is_a_protocol_error(msg: SyncWant, reason: str) -> None:
    pair = opened(push=True)
    pair.client_sends(listing())
    with pytest.raises(RemoteProtocolError, match=reason):
        pair.to_client(wire(msg))


def test_a_bad_sync_opener_is_refused_not_fatal() -> None:
    pair = handshaken_pair()
    bad = Sync(path="", push=False, sources=["a", "b"], names=["a"], stream=STREAM)
    (refused,) = pair.client_sends(bad)
    assert isinstance(refused, Refused) and "differ in number" in refused.reason
    assert pair.client.states(STREAM) is not None


def test_deleted_names_are_capped() -> None:
    pair = opened(push=True)
    msg = SyncDeleted(names=["x"] * (MAX_LIST + 1), stream=STREAM)
    with pytest.raises(RemoteProtocolError, match="more than"):
        pair.to_client(wire(replace(msg)))
