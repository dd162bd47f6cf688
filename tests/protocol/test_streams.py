"""The per-operation stream tables (tether.protocol.streams), as the Connection enforces them.

Every (operation, half-state, message type, role) is tried both ways: sent by the application
(allowed: bytes and the new state; refused: LocalProtocolError and nothing changed) and received
from a peer that skipped its own checks (allowed: the event and the new state; refused:
RemoteProtocolError). Exhaustively once, then under hypothesis; then one test per table with
the conversations a user relies on, and the chores the core does by itself (pong, credit).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import Pair, events_from, handshaken_pair, raw_data, sample, wire

from conversations import MESSAGES, OPENERS
from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.connection import CREDIT_THRESHOLD, INITIAL_WINDOW
from tether.protocol.frames import encode_msg
from tether.protocol.messages import (
    MAX_BYTES,
    MAX_FILES,
    REGISTRY,
    Batch,
    Close,
    Commit,
    Credit,
    Data,
    Done,
    Entries,
    Eof,
    Error,
    Exec,
    Exit,
    Fetch,
    Files,
    Get,
    List,
    Message,
    Meta,
    Ping,
    Pong,
    Put,
    Ready,
    Refused,
    Resize,
    Role,
    Shell,
    Started,
    Status,
)
from tether.protocol.records import replace
from tether.protocol.streams import ENDED, OPERATIONS, Operation

STREAM = 1
Step = tuple[str, int | None]


def _peer(role: Role) -> Role:
    return Role.SERVER if role is Role.CLIENT else Role.CLIENT


def route(op: Operation, role: Role, start: str, goal: str) -> list[Step]:
    """The shortest list of steps that takes ``role``'s half from ``start`` to ``goal``."""
    todo: deque[tuple[str, list[Step]]] = deque([(start, [])])
    seen = {start}
    while todo:
        state, steps = todo.popleft()
        if state == goal:
            return steps
        for (who, at, kind), after in op.moves.items():
            if who is role and at == state and after not in seen:
                seen.add(after)
                channel = None
                if kind == "eof":
                    channel = min(op.data[role, state] - op.data[role, after])
                todo.append((after, [*steps, (kind, channel)]))
    raise AssertionError(f"{goal} cannot be reached from {start}")


def message(kind: str, channel: int | None = None) -> Message:
    """A valid-looking message of any type on the test stream (openers and stream-0 types
    too: those must be refused on an open stream)."""
    if kind in MESSAGES:
        return MESSAGES[kind](STREAM, channel)
    return sample(kind, STREAM)


def step(pair: Pair, role: Role, kind: str, channel: int | None) -> list[object]:
    """``role`` does one step through both cores (what the peer's core yielded)."""
    if kind == "data":
        assert channel is not None
        if role is Role.CLIENT:
            return pair.client_data(STREAM, channel, b"x")
        return pair.server_data(STREAM, channel, b"x")
    msg = message(kind, channel)
    return pair.client_sends(msg) if role is Role.CLIENT else pair.server_sends(msg)


def opened(opener: Message, role: Role, state: str) -> Pair:
    """A pair with the stream ``opener`` opened and ``role``'s half driven to ``state``."""
    pair = handshaken_pair()
    pair.client_sends(replace(opener, stream=STREAM))
    op = OPERATIONS[opener.TYPE]
    first = op.first(opener)[0 if role is Role.CLIENT else 1]
    for kind, channel in route(op, role, first, state):
        step(pair, role, kind, channel)
    return pair


@dataclass(frozen=True)
class Case:
    opener: Message
    role: Role
    state: str
    kind: str  # a message type, or "data"
    channel: int | None  # for data and eof
    local: bool  # sent by the application (True) or received from the wire (False)

    def __str__(self) -> str:
        where = "sends" if self.local else "receives"
        return (f"{self.opener.TYPE}{self.opener.to_header()} {self.role.value} half "
                f"{self.state}: {self.kind}{'' if self.channel is None else self.channel} "
                f"({'local' if self.local else 'remote'} {where})")


def all_cases() -> list[Case]:
    kinds: list[tuple[str, int | None]] = [
        (name, None) for name in sorted(REGISTRY) if name != "eof"]
    kinds += [("eof", ch) for ch in (0, 1, 2)] + [("data", ch) for ch in (0, 1, 2)]
    cases = []
    for name, openers in OPENERS.items():
        op = OPERATIONS[name]
        for opener in openers:
            for role in Role:
                first = op.first(opener)[0 if role is Role.CLIENT else 1]
                reachable = [s for s in op.states[role] if _reachable(op, role, first, s)]
                for state in reachable:
                    for kind, channel in kinds:
                        for local in (True, False):
                            cases.append(Case(opener, role, state, kind, channel, local))
    return cases


def _reachable(op: Operation, role: Role, start: str, goal: str) -> bool:
    try:
        route(op, role, start, goal)
    except AssertionError:
        return False
    return True


CASES = all_cases()


def expected(case: Case) -> str | None:
    """The half's next state by the table, or None: a protocol error."""
    op = OPERATIONS[case.opener.TYPE]
    if case.kind == "data":
        return case.state if case.channel in op.data[case.role, case.state] else None
    after = op.moves.get((case.role, case.state, case.kind))
    if after is not None and case.kind == "eof" and case.channel not in op.data[
            case.role, case.state]:
        return None
    return after


def half(pair: Pair, conn_role: Role, role: Role) -> str | None:
    """``role``'s half-state as the ``conn_role`` core sees it (ENDED once retired)."""
    conn = pair.client if conn_role is Role.CLIENT else pair.server
    states = conn.states(STREAM)
    if states is None:
        return ENDED
    return states[0 if role is Role.CLIENT else 1]


def check(case: Case) -> None:
    pair = opened(case.opener, case.role, case.state)
    after = expected(case)
    me = pair.client if case.role is Role.CLIENT else pair.server
    other = pair.server if case.role is Role.CLIENT else pair.client
    if case.local:
        before = (me.states(STREAM), me.send_window(STREAM), me.open_streams)
        try:
            if case.kind == "data":
                assert case.channel is not None
                out = me.send_data(STREAM, case.channel, b"x")
            else:
                out = me.send(message(case.kind, case.channel))
        except LocalProtocolError as exc:
            assert after is None, f"{case}: refused ({exc}) but the table allows it"
            assert (me.states(STREAM), me.send_window(STREAM), me.open_streams) == before
            return
        assert after is not None, f"{case}: sent, but the table forbids it"
        assert out
        assert half(pair, case.role, case.role) == after
        return
    raw = (raw_data(STREAM, case.channel or 0, b"x") if case.kind == "data"
           else wire(message(case.kind, case.channel)))
    try:
        events = events_from(other, raw)
    except RemoteProtocolError as exc:
        assert after is None, f"{case}: refused ({exc}) but the table allows it"
        return
    assert after is not None, f"{case}: accepted, but the table forbids it"
    assert half(pair, _peer(case.role), case.role) == after
    assert len(events) == 1


def test_every_case_either_moves_as_the_table_says_or_is_a_protocol_error() -> None:
    assert len(CASES) > 3000
    for case in CASES:
        check(case)


@settings(max_examples=400, deadline=None)
@given(case=st.sampled_from(CASES))
def test_hypothesis_over_states_messages_and_roles(case: Case) -> None:
    check(case)


def test_the_tables_only_name_each_roles_own_stream_messages() -> None:
    for op in OPERATIONS.values():
        for role, _, kind in op.moves:
            cls = REGISTRY[kind]
            assert role in cls.SENDERS and not cls.CONNECTION and not cls.OPENS, (op, kind)
        for (role, _), channels in op.data.items():
            assert role is Role.SERVER or channels <= {0}, op


# --- one test per table ----------------------------------------------------------------------


def scripted(opener: Message, *steps: tuple[Role, str, int | None]) -> Pair:
    """A pair with the stream ``opener`` opened and ``steps`` done through both cores."""
    pair = handshaken_pair()
    pair.client_sends(replace(opener, stream=STREAM))
    for role, kind, channel in steps:
        step(pair, role, kind, channel)
    return pair


def refused_both_ways(opener: Message, steps: list[tuple[Role, str, int | None]], role: Role,
                      msg: Message, match: str) -> None:
    """``msg`` from ``role`` after ``steps`` is refused when sent and when received."""
    pair = scripted(opener, *steps)
    with pytest.raises(LocalProtocolError, match=match):
        (pair.client if role is Role.CLIENT else pair.server).send(msg)
    assert pair.client.states(STREAM) == pair.server.states(STREAM)  # nothing changed
    pair = scripted(opener, *steps)
    with pytest.raises(RemoteProtocolError, match=match):
        events_from(pair.server if role is Role.CLIENT else pair.client, wire(msg))


C, S = Role.CLIENT, Role.SERVER
EXEC = Exec(argv=["cat"])


def test_exec_table() -> None:
    pair = scripted(EXEC)
    with pytest.raises(LocalProtocolError, match="channel 1 of an exec stream"):
        pair.server.send_data(STREAM, 1, b"output before started")
    assert pair.client_data(STREAM, 0, b"early stdin") == [Data(STREAM, 0, b"early stdin")]
    assert step(pair, S, "started", None) == [MESSAGES["started"](STREAM, None)]
    started = [(S, "started", None)]
    for msg, role in [(Meta(size=1, mode=0, mtime_ns=0, stream=STREAM), S),
                      (Ready(offset=0, stream=STREAM), S),
                      (Commit(size=1, hash="h", stream=STREAM), C),
                      (Resize(rows=1, cols=1, stream=STREAM), C),
                      (Status(index=1, status=0, stream=STREAM), S),
                      (Eof(channel=1, stream=STREAM), S),
                      (Started(pid=2, stream=STREAM), S)]:
        refused_both_ways(EXEC, started, role, msg,
                          f"may not send '{msg.TYPE}' on an exec stream")
    refused_both_ways(EXEC, [], S, Exit(status=0, stream=STREAM),
                      "may not send 'exit' on an exec stream")
    refused_both_ways(EXEC, [(C, "eof", 0)], C, Eof(channel=0, stream=STREAM),
                      "may not send 'eof' on an exec stream")
    assert step(pair, C, "eof", 0) == [Eof(channel=0, stream=STREAM)]
    assert pair.server_sends(Exit(status=0, stream=STREAM)) == [Exit(status=0, stream=STREAM)]


def test_shell_table() -> None:
    terminal = scripted(Shell(pty=True), (S, "started", None))
    assert step(terminal, C, "resize", None) == [Resize(rows=40, cols=120, stream=STREAM)]
    with pytest.raises(LocalProtocolError, match="channel 2 of a shell stream"):
        terminal.server.send_data(STREAM, 2, b"a terminal has one output")
    refused_both_ways(Shell(pty=True), [(S, "started", None)], S,
                      Status(index=1, status=0, stream=STREAM),
                      "may not send 'status' on a shell stream")
    lines = scripted(Shell(pty=False), (S, "started", None))
    assert step(lines, S, "data", 2) == [Data(STREAM, 2, b"x")]
    assert step(lines, S, "status", None) == [MESSAGES["status"](STREAM, None)]


def test_put_table() -> None:
    resume = Put(path="f", size=1, resume=True)
    pair = scripted(resume)
    with pytest.raises(LocalProtocolError, match="channel 0 of a put stream"):
        pair.client.send_data(STREAM, 0, b"data before begin")
    with pytest.raises(RemoteProtocolError, match="channel 0 of a put stream"):
        pair.to_server(raw_data(STREAM, 0, b"data before begin"))
    pair = scripted(resume, (S, "ready", None), (C, "begin", None), (C, "data", 0))
    assert step(pair, C, "commit", None) == [MESSAGES["commit"](STREAM, None)]
    plain = Put(path="f", size=1)
    refused_both_ways(plain, [], C, MESSAGES["begin"](STREAM, None),
                      "may not send 'begin' on a put stream")
    refused_both_ways(plain, [], S, MESSAGES["ready"](STREAM, None),
                      "may not send 'ready' on a put stream")
    pair = scripted(plain, (C, "commit", None))
    with pytest.raises(RemoteProtocolError, match="channel 0 of a put stream"):
        pair.to_server(raw_data(STREAM, 0, b"data after commit"))
    refused_both_ways(Put(path="d", kind="dir"), [], C, MESSAGES["commit"](STREAM, None),
                      "may not send 'commit' on a put stream")


def test_get_table() -> None:
    pair = scripted(Get(path="f"))
    with pytest.raises(RemoteProtocolError, match="channel 0 of a get stream"):
        pair.to_client(raw_data(STREAM, 0, b"data before meta"))
    refused_both_ways(Get(path="f"), [], S, Done(stream=STREAM), "may not send 'done' on a get")
    pair = scripted(Get(path="f"), (S, "meta", None))
    with pytest.raises(RemoteProtocolError, match="channel 0 of a get stream"):
        pair.to_server(raw_data(STREAM, 0, b"a client sends nothing on a get"))


def test_list_table() -> None:
    pair = scripted(List(path="d", batched=True))
    assert len(step(pair, S, "entry", None)) == 1  # a client accepts both forms
    assert len(step(pair, S, "entries", None)) == 1
    refused_both_ways(List(path="d"), [], C, Credit(size=1, stream=STREAM),
                      "may not send 'credit' on a list stream")
    with pytest.raises(RemoteProtocolError, match="channel 0 of a list stream"):
        pair.to_client(raw_data(STREAM, 0, b"x"))


def test_batch_table() -> None:
    opener = OPENERS["batch"][0]
    pair = scripted(opener)
    assert step(pair, C, "data", 0) == [Data(STREAM, 0, b"x")]
    refused_both_ways(opener, [], C, MESSAGES["commit"](STREAM, None),
                      "may not send 'commit' on a batch stream")
    refused_both_ways(opener, [], C, Eof(channel=0, stream=STREAM),
                      "may not send 'eof' on a batch stream")
    with pytest.raises(RemoteProtocolError, match="channel 0 of a batch stream"):
        pair.to_client(raw_data(STREAM, 0, b"x"))


def test_fetch_table() -> None:
    opener = OPENERS["fetch"][0]
    pair = scripted(opener)
    with pytest.raises(RemoteProtocolError, match="channel 0 of a fetch stream"):
        pair.to_client(raw_data(STREAM, 0, b"data before files"))
    refused_both_ways(opener, [(S, "files", None)], S, MESSAGES["files"](STREAM, None),
                      "may not send 'files' on a fetch stream")
    pair = scripted(opener, (S, "files", None))
    assert step(pair, S, "data", 0) == [Data(STREAM, 0, b"x")]


# --- checks of a message's values, as it arrives ---------------------------------------------


def batch(**fields: object) -> Batch:
    spec: dict[str, object] = dict(path="d", names=["a", "b"], sizes=[1, 1], modes=[0, 0],
                                   mtimes=[0, 0], hashes=["h", "h"], stream=STREAM)
    spec.update(fields)
    return Batch(**spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("msg, reason", [
    (batch(sizes=[1], modes=[0, 0]), "differ in length"),
    (batch(sizes=[-1, 1]), "negative size in a batch"),
    (batch(sizes=[MAX_BYTES, 1]), f"a batch of {MAX_BYTES + 1} bytes exceeds"),
    (batch(names=["n"] * (MAX_FILES + 1), sizes=[0] * (MAX_FILES + 1),
           modes=[0] * (MAX_FILES + 1), mtimes=[0] * (MAX_FILES + 1),
           hashes=["h"] * (MAX_FILES + 1)), f"exceeds the limit of {MAX_FILES}"),
    (Fetch(path="d", names=["n"] * (MAX_FILES + 1), stream=STREAM), "exceeds the limit"),
])
def test_an_opener_over_the_caps_is_refused_not_fatal(msg: Message, reason: str) -> None:
    """A malformed request is the client's mistake in one operation: bad_request, and the
    connection goes on (PROTOCOL.md, "Batches")."""
    pair = handshaken_pair()
    (refused,) = pair.client_sends(msg)
    assert isinstance(refused, Refused) and reason in refused.reason
    assert refused.stream == STREAM and refused.request == msg
    answer = Error(code="bad_request", message=refused.reason, stream=STREAM)
    assert pair.server_sends(answer) == [answer]
    assert pair.client_sends(Close(stream=STREAM)) == [Close(stream=STREAM)]
    assert pair.open_exec() == 3


@pytest.mark.parametrize("files, reason", [
    (Files(sizes=[1], modes=[0], mtimes=[0], hashes=["h"]), "differ in length"),
    (Files(sizes=[1, 2], modes=[0], mtimes=[0, 0], hashes=["h", "h"]), "differ in length"),
    (Files(sizes=[-1, 2], modes=[0, 0], mtimes=[0, 0], hashes=["h", "h"]), "negative size"),
    (Files(sizes=[MAX_BYTES, 1], modes=[0, 0], mtimes=[0, 0], hashes=["h", "h"]), "exceeds"),
])
def test_a_fetch_answer_over_the_caps_is_a_protocol_error(files: Files, reason: str) -> None:
    pair = opened(Fetch(path="d", names=["a", "b"]), Role.SERVER, "opening")
    with pytest.raises(RemoteProtocolError, match=f"the server's answer to a fetch: .*{reason}"):
        pair.to_client(wire(replace(files, stream=STREAM)))


def test_entries_whose_lists_differ_are_a_protocol_error() -> None:
    pair = opened(List(path="d", batched=True), Role.SERVER, "listing")
    bad = Entries(names=["a", "b"], kinds=["file"], sizes=[0, 0], modes=[0, 0], mtimes=[0, 0],
                  targets=[None, None], stream=STREAM)
    with pytest.raises(RemoteProtocolError, match="fields differ in number"):
        pair.to_client(wire(bad))


# --- the chores the core does itself ---------------------------------------------------------


def encoded(msg: Message) -> bytes:
    return encode_msg(msg.stream, msg.to_header())


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_a_ping_is_answered_in_data_to_send(role: Role) -> None:
    pair = handshaken_pair()
    me, peer = (pair.client, pair.server) if role is Role.CLIENT else (pair.server, pair.client)
    assert events_from(me, peer.send(Ping(token=2**40))) == []  # not the application's
    answer = me.data_to_send()
    assert answer == encoded(Pong(token=2**40))
    assert me.data_to_send() == b""  # given once
    assert events_from(peer, answer) == []  # and the pong is absorbed there


def test_a_pending_pong_goes_first_in_what_send_returns() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    events_from(pair.server, pair.client.send(Ping(token=3)))
    out = pair.server.send(Exit(status=0, stream=STREAM))
    assert out == encoded(Pong(token=3)) + encoded(Exit(status=0, stream=STREAM))
    assert pair.server.data_to_send() == b""


def test_no_pong_after_a_fatal_error_was_sent() -> None:
    pair = handshaken_pair()
    pair.server.send(Error(code="shutting_down", message="bye"))
    pair.server.receive_data(wire(Ping(token=1)))
    with pytest.raises(RemoteProtocolError, match="after the connection was closed"):
        pair.server.next_event()
    assert pair.server.data_to_send() == b""


def test_credit_is_granted_as_data_is_consumed() -> None:
    pair = handshaken_pair()
    pair.open_exec()
    for _ in range(INITIAL_WINDOW // CREDIT_THRESHOLD):
        pair.server_data(STREAM, 1, b"o" * CREDIT_THRESHOLD)
    assert pair.server.send_window(STREAM) == 0
    pair.client.consumed(STREAM, CREDIT_THRESHOLD // 2)
    assert pair.client.data_to_send() == b""  # below the threshold: nothing yet
    pair.client.consumed(STREAM, CREDIT_THRESHOLD // 2)
    credit = pair.client.data_to_send()
    assert events_from(pair.server, credit) == [Credit(size=CREDIT_THRESHOLD, stream=STREAM)]
    assert pair.server.send_window(STREAM) == CREDIT_THRESHOLD


def test_pending_credit_is_never_overtaken() -> None:
    """The core's own frames go first in what the next send returns, so a grant always
    precedes the frames sent after it (a final message above all)."""
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_data(STREAM, 1, b"o" * CREDIT_THRESHOLD)
    pair.client.consumed(STREAM, CREDIT_THRESHOLD)
    out = pair.client.send(Close(stream=STREAM))
    assert events_from(pair.server, out) == [Credit(size=CREDIT_THRESHOLD, stream=STREAM),
                                             Close(stream=STREAM)]
    pair = handshaken_pair()
    pair.open_exec()
    pair.server_data(STREAM, 1, b"o" * CREDIT_THRESHOLD)
    pair.client.consumed(STREAM, CREDIT_THRESHOLD)
    out = pair.client.data_prefix(STREAM, 0, 1) + b"i"
    assert events_from(pair.server, out) == [Credit(size=CREDIT_THRESHOLD, stream=STREAM),
                                             Data(STREAM, 0, b"i")]


def test_no_credit_where_the_peer_sends_no_data() -> None:
    pair = opened(Put(path="f", size=1), Role.CLIENT, "sending")
    pair.client.consumed(STREAM, CREDIT_THRESHOLD)  # nothing the server sent: nothing granted
    assert pair.client.data_to_send() == b""


def test_every_opener_has_a_table() -> None:
    assert set(OPERATIONS) == {name for name, cls in REGISTRY.items() if cls.OPENS}
    assert set(OPENERS) == set(OPERATIONS)
    assert Done.FINAL and Exit.FINAL and Close.FINAL and Error.FINAL
    assert not any(OPERATIONS[name].moves.get((Role.SERVER, s, "started"))
                   for name in ("put", "get", "list", "batch", "fetch") for s in
                   OPERATIONS[name].states[Role.SERVER])
    assert frozenset({Role.SERVER}) == Started.SENDERS
