"""Per-operation stream rules: one transition table per opening message, in one place.

A stream is one operation, named by the message that opened it (``exec``, ``shell``, ``put``,
``get``, ``list``, ``batch``, ``fetch``, ``sync``, ``connect``, ``listen``). Each side of a
stream has a *half*: what the client has sent on it and what the server has sent on it. The two
halves move independently (the two directions of a connection are independent), and each half
moves only on its own sender's frames, so both peers always agree on both halves without waiting
for each other.

The rules (docs/PROTOCOL.md, "Streams" and "Operations", is the normative text):

1. The opening message chooses each half's first state (``put{kind, resume}``,
   ``shell{pty}``); the opener itself is the client's first frame on the stream.
2. :attr:`Operation.moves` maps ``(role, state, message type)`` to the half's next state. A
   message that is not there is a protocol error: RemoteProtocolError when it arrives,
   LocalProtocolError when the application tries to send it.
3. :attr:`Operation.data` maps ``(role, state)`` to the DATA channels that role may send on in
   that state; DATA on any other channel is a protocol error. ``eof`` names one of those
   channels and moves the half to a state without it.
4. A final message (``exit``, ``done``, ``close``, ``error``) moves its half to :data:`ENDED`,
   which allows nothing. The client's ``close`` and ``error`` and the server's ``error`` are
   allowed in every state (abandoning and refusing are always possible).
5. ``credit`` is allowed only where the peer sends DATA in that operation.

The connection (:mod:`tether.protocol.connection`) keeps each stream's two half-states and
enforces these tables on send and on receive; it looks a DATA frame's channel up in a set
precomputed per state, so bulk data costs no table lookup.
"""

from __future__ import annotations

from tether.protocol.messages import Message, Role
from tether.protocol.sync_messages import LIST_WINDOW

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Final

CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER
ENDED: Final = "ended"
NOTHING: frozenset[int] = frozenset()

# A half's table: state -> {message type: next state}; and state -> DATA channels.
Half = dict[str, dict[str, str]]


class Operation:
    """The rules of one kind of stream: its two halves' tables and first states."""

    __slots__ = ("data", "first", "moves", "name", "states", "window")

    def __init__(self, name: str, first: Callable[[Message], tuple[str, str]],
                 client: Half, server: Half, client_data: dict[str, frozenset[int]],
                 server_data: dict[str, frozenset[int]],
                 window: tuple[str, str, int] | None = None) -> None:
        self.name = name
        self.window = window  # (request type, answer type, most requests unanswered)
        self.first = first  # the opener -> (client's first state, server's first state)
        self.moves: dict[tuple[Role, str, str], str] = {}
        self.data: dict[tuple[Role, str], frozenset[int]] = {}
        self.states: dict[Role, tuple[str, ...]] = {}
        finals = {CLIENT: ("close", "error"), SERVER: ("error",)}
        for role, half, data in ((CLIENT, client, client_data), (SERVER, server, server_data)):
            self.states[role] = (*half, ENDED)
            for state, moves in half.items():
                for kind in finals[role]:
                    self.moves[role, state, kind] = ENDED
                for kind, after in moves.items():
                    self.moves[role, state, kind] = after
                self.data[role, state] = data.get(state, NOTHING)
            self.data[role, ENDED] = NOTHING

    def next_state(self, role: Role, state: str, kind: str) -> str | None:
        """The half's state after ``role`` sends a ``kind`` message; None: not allowed."""
        return self.moves.get((role, state, kind))

    def __repr__(self) -> str:
        return f"Operation({self.name!r})"


def _same(*states: str, **extra: str) -> dict[str, str]:
    """Self-loops for ``states`` (message types that leave the state as it is) plus moves."""
    return dict.fromkeys(states, "") | extra


def _half(table: dict[str, dict[str, str]]) -> Half:
    """A table where an empty target means "stay in this state"."""
    return {state: {kind: after or state for kind, after in moves.items()}
            for state, moves in table.items()}


# --- exec ---------------------------------------------------------------------------------------
# client: stdin DATA and its eof, signals, credit for the output it reads; close/error.
# server: started once, then stdout/stderr DATA, credit for stdin, exit; error at any time.

EXEC = Operation(
    "exec", lambda msg: ("input", "starting"),
    client=_half({"input": _same("signal", "credit", eof="input_ended"),
                  "input_ended": _same("signal", "credit")}),
    server=_half({"starting": {"started": "running"},
                  "running": _same("credit", exit=ENDED)}),
    client_data={"input": frozenset({0})},
    server_data={"running": frozenset({1, 2})},
)


# --- shell ------------------------------------------------------------------------------------
# as exec, plus resize from the client; a terminal's output is channel 1 only, line mode's is
# channels 1 and 2 with a status per command.


def _shell_first(msg: Message) -> tuple[str, str]:
    return "input", "starting" if getattr(msg, "pty", True) else "starting_lines"


SHELL = Operation(
    "shell", _shell_first,
    client=_half({"input": _same("signal", "resize", "credit", eof="input_ended"),
                  "input_ended": _same("signal", "resize", "credit")}),
    server=_half({"starting": {"started": "terminal"},
                  "terminal": _same("credit", exit=ENDED),
                  "starting_lines": {"started": "lines"},
                  "lines": _same("credit", "status", exit=ENDED)}),
    client_data={"input": frozenset({0})},
    server_data={"terminal": frozenset({1}), "lines": frozenset({1, 2})},
)


# --- put --------------------------------------------------------------------------------------
# a file: (ready, then begin when resuming) DATA, commit, done. A directory or a symlink: done.


def _put_first(msg: Message) -> tuple[str, str]:
    if getattr(msg, "kind", "file") != "file":
        return "no_data", "answering"
    if getattr(msg, "resume", False):
        return "await_begin", "resuming"
    return "sending", "receiving"


PUT = Operation(
    "put", _put_first,
    client=_half({"await_begin": {"begin": "sending"},
                  "sending": {"commit": "committed"},
                  "committed": {},
                  "no_data": {}}),
    server=_half({"resuming": {"ready": "receiving"},
                  "receiving": _same("credit", done=ENDED),
                  "answering": {"done": ENDED}}),
    client_data={"sending": frozenset({0})},
    server_data={},
)


# --- get --------------------------------------------------------------------------------------
# the server: meta, the file's DATA, done; the client only grants credit (and may abandon).

GET = Operation(
    "get", lambda msg: ("reading", "opening"),
    client=_half({"reading": _same("credit")}),
    server=_half({"opening": {"meta": "sending"},
                  "sending": {"done": ENDED}}),
    client_data={},
    server_data={"sending": frozenset({0})},
)


# --- list -------------------------------------------------------------------------------------
# the server: entry or entries messages (a client accepts both forms), then done.

LIST = Operation(
    "list", lambda msg: ("reading", "listing"),
    client=_half({"reading": {}}),
    server=_half({"listing": _same("entry", "entries", done=ENDED)}),
    client_data={},
    server_data={},
)


# --- batch ------------------------------------------------------------------------------------
# the client: the files' contents as DATA; the server: credit as it stores them, then done.

BATCH = Operation(
    "batch", lambda msg: ("sending", "storing"),
    client=_half({"sending": {}}),
    server=_half({"storing": _same("credit", done=ENDED)}),
    client_data={"sending": frozenset({0})},
    server_data={},
)


# --- fetch ------------------------------------------------------------------------------------
# the server: files (what it will send), the contents as DATA, done.

FETCH = Operation(
    "fetch", lambda msg: ("reading", "opening"),
    client=_half({"reading": _same("credit")}),
    server=_half({"opening": {"files": "sending"},
                  "sending": {"done": ENDED}}),
    client_data={},
    server_data={"sending": frozenset({0})},
)


# --- connect ----------------------------------------------------------------------------------
# a byte stream both ways on channel 0, each direction ended by its eof (half-close). The client
# may send at once (the server holds it, within the window, until it has connected); the server
# answers connected, then sends DATA and its eof, and ends the stream with done (at any time
# once connected: the client abandoned it, or both directions are over).

CONNECT = Operation(
    "connect", lambda msg: ("sending", "connecting"),
    client=_half({"sending": _same("credit", eof="sent"),
                  "sent": _same("credit")}),
    server=_half({"connecting": {"connected": "open"},
                  "open": _same("credit", eof="drained", done=ENDED),
                  "drained": _same("credit", done=ENDED)}),
    client_data={"sending": frozenset({0})},
    server_data={"open": frozenset({0})},
)


# --- listen -----------------------------------------------------------------------------------
# the server: listening (the address it bound), then an incoming per connection, done when the
# listener is closed (the client closed the stream, or the server stops it).

LISTEN = Operation(
    "listen", lambda msg: ("waiting", "binding"),
    client=_half({"waiting": {}}),
    server=_half({"binding": {"listening": "listening"},
                  "listening": _same("incoming", done=ENDED)}),
    client_data={},
    server_data={},
)


# --- sync -------------------------------------------------------------------------------------
# The source (the client in a push, the server in a pull) lists its tree in sync_lists, each
# answered by the destination's sync_want (plus signatures as DATA), and sends the wanted files
# (sync_file, DATA, sync_commit; or sync_batch and DATA) as the answers come. A pushing client
# ends with sync_sent; the server's final message is done.

_SOURCE = {"listing": _same("sync_list", "sync_file", "sync_commit", "sync_batch", "credit",
                            sync_listed="sending"),
           "sending": _same("sync_file", "sync_commit", "sync_batch", "credit")}
_CONTENT = frozenset({0})


def _sync_first(msg: Message) -> tuple[str, str]:
    return ("listing", "answering") if getattr(msg, "push", True) else ("answering", "listing")


SYNC = Operation(
    "sync", _sync_first,
    client=_half({**_SOURCE,
                  "sending": {**_SOURCE["sending"], "sync_sent": "sent"},
                  "sent": {},
                  "answering": _same("sync_want", "credit")}),
    server=_half({"answering": _same("sync_want", "sync_deleted", "credit", done=ENDED),
                  **_SOURCE,
                  "sending": {**_SOURCE["sending"], "done": ENDED}}),
    client_data={"listing": _CONTENT, "sending": _CONTENT, "answering": _CONTENT},
    server_data={"listing": _CONTENT, "sending": _CONTENT, "answering": _CONTENT},
    window=("sync_list", "sync_want", LIST_WINDOW),
)


OPERATIONS: dict[str, Operation] = {
    op.name: op for op in (EXEC, SHELL, PUT, GET, LIST, BATCH, FETCH, SYNC, CONNECT, LISTEN)
}


# --- enumerating the tables ---------------------------------------------------------------------


def paths(op: Operation, role: Role, state: str) -> Iterator[list[tuple[str, int | None]]]:
    """Every way one half can go from ``state`` to its end, as ``(message type, channel)``
    steps (``("data", channel)`` for DATA; the channel of an ``eof``), taking each self-loop
    once: the valid conversations the fuzzers start from are made of these."""
    yield from _paths(op, role, state, frozenset())


def _paths(op: Operation, role: Role, state: str, seen: frozenset[str]
           ) -> Iterator[list[tuple[str, int | None]]]:
    loops: list[tuple[str, int | None]] = [("data", ch) for ch in sorted(op.data[role, state])]
    onward: list[tuple[str, str]] = []
    for (who, at, kind), after in op.moves.items():
        if who is role and at == state:
            if after == state:
                loops.append((kind, None))
            else:
                onward.append((kind, after))
    for kind, after in onward:
        if after == ENDED:
            yield [*loops, (kind, None)]
        elif after not in seen:
            step: tuple[str, int | None] = (kind, None)
            if kind == "eof":
                step = ("eof", min(op.data[role, state] - op.data[role, after]))
            for rest in _paths(op, role, after, seen | {state}):
                yield [*loops, step, *rest]
