"""The connection state machine: every rule about which frame may come when, in one place.

Rules (docs/PROTOCOL.md, "Connection" and "Streams", is the normative text):

1. Handshake. The client's first frame is ``hello``; the server answers ``welcome`` (the client is
   authenticated and a version is chosen, one the client offered) or a stream-0 ``error`` and
   closes. Before the handshake ends only ``hello``, ``welcome`` and ``error`` are valid;
   ``hello``/``welcome`` after it are errors. The client may pipeline: send stream messages right
   behind its ``hello`` (the server reads them only once it has sent ``welcome``).
2. Roles. Each message type names who may send it (``Message.SENDERS``); DATA on channels 1 and
   2 (stdout, stderr) only comes from the server.
3. Streams. Only the client opens streams, with odd ids that strictly increase. A stream ends
   when both sides have sent their final message (server: ``exit``, ``done`` or ``error``;
   client: ``close`` or ``error``). After a side has sent its final message, the peer's
   non-final frames already in flight are dropped; after a side has *received* the peer's final
   message, anything more from the peer on that stream is an error. A frame for an id that was
   never opened, or one fully ended, is an error.
4. Operations. What may be sent on a stream, and on which DATA channels, is the transition
   table of the operation that opened it (:mod:`tether.protocol.streams`), checked for every
   frame in both directions. An opener whose values are wrong (:meth:`Message.problem`) opens
   its stream and arrives as :class:`Refused`, for a ``bad_request`` answer; any other message
   with a problem is a protocol error.
5. Flow control. Each side may send at most ``INITIAL_WINDOW`` bytes of DATA per stream beyond
   what the peer has granted with ``credit``. Exceeding it is an error; the receiver grants credit
   as its application consumes the data (:meth:`Connection.consumed`), so buffering is bounded
   by the window. A credit is 1..MAX_CREDIT bytes and may not raise the window above MAX_CREDIT.
   How much to grant is the receiver's choice: the core tunes each stream's window to the path
   (:mod:`tether.protocol.window`), within ``window_budget``.
6. Chores. A ``ping`` is answered with a ``pong`` here, and neither reaches the application;
   credit is granted here, with the window probes (``ping``) that tune it. All go into the
   outbound bytes: :meth:`Connection.data_to_send`, which :meth:`Connection.send` and
   :meth:`Connection.data_prefix` also put first in what they return, so a driver only ever
   writes what the core gives it, in order.
7. Errors. Any violation raises RemoteProtocolError (the peer broke a rule) or LocalProtocolError
   (we tried to); after a remote violation the connection only sends one stream-0 ``error``, and
   after sending a stream-0 ``error`` it sends nothing more.

``send`` and ``data_prefix`` check everything before they change any state, so a refused send
leaves the connection exactly as it was.
"""

from __future__ import annotations

from enum import Enum, auto
from time import monotonic

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.decode import decode_message
from tether.protocol.frames import (
    KIND_DATA,
    MAX_BODY,
    FrameDecoder,
    encode_data_prefix,
    encode_msg,
)
from tether.protocol.messages import (
    Credit,
    Data,
    Eof,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Refused,
    Role,
    Welcome,
)
from tether.protocol.streams import OPERATIONS, Operation
from tether.protocol.window import INITIAL_WINDOW as INITIAL_WINDOW
from tether.protocol.window import MAX_CREDIT as MAX_CREDIT
from tether.protocol.window import WINDOW_BUDGET, Tuner, Window

TYPE_CHECKING = False  # typing is not imported at run time: every `tether run` would pay for it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

PROTOCOL_VERSIONS: Final = (1,)
CREDIT_THRESHOLD: Final = INITIAL_WINDOW // 4  # the grant threshold of an untuned window


class _Sentinel(Enum):
    NEED_DATA = auto()
    CLOSED = auto()


NEED_DATA: Final = _Sentinel.NEED_DATA  # no complete event yet: feed more bytes
CLOSED: Final = _Sentinel.CLOSED  # the peer closed the byte stream at a frame boundary

Event = Message | Data | Refused | _Sentinel


class State(Enum):
    HANDSHAKE = auto()
    OPEN = auto()
    CLOSED = auto()


class _Stream:
    """One open stream: its operation, both halves' states (streams.py) and its windows."""

    __slots__ = ("local_asks", "local_channels", "local_eof", "local_final", "local_state",
                 "op", "recv", "remote_asks", "remote_channels", "remote_eof", "remote_final",
                 "remote_state", "request", "send_credit")

    def __init__(self, request: Message, local: Role) -> None:
        self.op: Operation = OPERATIONS[request.TYPE]
        self.request = request  # its opener: some replies are checked against it
        client, server = self.op.first(request)
        self.local_state, self.remote_state = (
            (client, server) if local is Role.CLIENT else (server, client))
        # the DATA channels each side may send on now (looked up once per state change)
        self.local_channels = self.op.data[local, self.local_state]
        self.remote_channels = self.op.data[_peer(local), self.remote_state]
        self.send_credit = INITIAL_WINDOW
        self.recv = Window()  # what the peer may send us, and what we hold of it
        self.local_final = False
        self.remote_final = False
        self.local_eof: set[int] = set()  # channels ended by eof (for clearer errors)
        self.remote_eof: set[int] = set()
        self.local_asks = 0  # our window requests (sync_list) the peer has not answered
        self.remote_asks = 0  # the peer's that we have not answered


def _asks(stream: _Stream, msg: Message, local: bool, error: type[Exception]) -> None:
    """The operation's request window (streams.py, rule 6): ``local`` says we send ``msg``.
    A receiver enforces it on what it receives: more requests than the window, unanswered by
    its own answers, is a protocol error; a sender may not exceed it either. (An answer that
    answers nothing is the application's to refuse: it knows what it asked.)"""
    window = stream.op.window
    if window is None:
        return
    request, answer, limit = window
    if request == msg.TYPE:
        asks = (stream.local_asks if local else stream.remote_asks) + 1
        if asks > limit:
            raise error(f"more than {limit} {request} messages unanswered by {answer}")
        if local:
            stream.local_asks = asks
        else:
            stream.remote_asks = asks
    elif answer == msg.TYPE:
        if local:
            stream.remote_asks = max(stream.remote_asks - 1, 0)
        else:
            stream.local_asks = max(stream.local_asks - 1, 0)


def _an(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _peer(role: Role) -> Role:
    return Role.SERVER if role is Role.CLIENT else Role.CLIENT


class Connection:
    """One side of a tether connection, with no I/O: feed bytes, read events, get bytes to send."""

    def __init__(self, role: Role, *, window_budget: int = WINDOW_BUDGET,
                 clock: Callable[[], float] = monotonic) -> None:
        """``window_budget``: bytes of DATA the streams' receive windows may add up to as they
        grow (:mod:`tether.protocol.window`); at or below ``INITIAL_WINDOW`` windows stay at
        ``INITIAL_WINDOW`` and no window probe is sent. ``clock`` times the window probes'
        round trips (seconds; the tests' is simulated)."""
        self.role = role
        self.state = State.HANDSHAKE
        self.version: int | None = None
        self._decoder = FrameDecoder()
        self._streams: dict[int, _Stream] = {}
        self._last_stream = -1  # highest stream id opened so far
        self._sent_hello = False
        self._got_hello = False
        self._versions: frozenset[int] = frozenset()  # the versions the client offered
        self._broken = False  # the peer broke the protocol
        self._sent_fatal = False  # we sent a stream-0 error
        self._outbound = bytearray()  # frames the core itself sends: pongs, credit, probes
        self._tuner = Tuner(window_budget, clock)

    # --- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` when the peer closed its side."""
        self._decoder.feed(data)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Space to receive the next bytes into without a copy (``recv_into``, asyncio's
        ``BufferedProtocol``); report what was written with :meth:`buffer_updated`."""
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the space :meth:`get_buffer` gave."""
        self._decoder.buffer_updated(nbytes)

    def next_event(self) -> Event:
        """The next event, NEED_DATA, or CLOSED; raises RemoteProtocolError on a violation."""
        if self._broken:
            raise RemoteProtocolError("connection already failed")
        try:
            while True:
                frame = self._decoder.next_frame()
                if frame is None:
                    if self._decoder.at_eof and not self._decoder.buffered:
                        self.state = State.CLOSED
                        return CLOSED
                    return NEED_DATA
                if frame.kind == KIND_DATA:
                    event: Message | Data | Refused | None = self._receive_data_frame(
                        Data(frame.stream, frame.channel, frame.body)
                    )
                else:
                    assert frame.header is not None
                    event = self._receive_message(decode_message(frame.header, frame.stream))
                if event is not None:
                    return event
        except RemoteProtocolError:
            self._broken = True
            raise

    def _receive_message(self, msg: Message) -> Message | Refused | None:
        peer = _peer(self.role)
        if peer not in msg.SENDERS:
            raise RemoteProtocolError(f"a {peer.value} may not send {msg.TYPE!r}")
        if msg.stream == 0:
            return self._receive_connection_message(msg)
        if msg.CONNECTION:
            raise RemoteProtocolError(f"{msg.TYPE!r} belongs on stream 0, not {msg.stream}")
        if self.state is not State.OPEN:
            raise RemoteProtocolError(f"{msg.TYPE!r} {self._not_open()}")
        if msg.OPENS:
            self._open(msg, RemoteProtocolError)
            reason = msg.problem(None)
            return msg if reason is None else Refused(msg.stream, msg, reason)
        stream = self._known(msg.stream)
        after = self._move(stream, peer, stream.remote_state, msg, RemoteProtocolError)
        _asks(stream, msg, False, RemoteProtocolError)
        if isinstance(msg, Credit) and (
                not 0 < msg.size <= MAX_CREDIT or stream.send_credit + msg.size > MAX_CREDIT):
            raise RemoteProtocolError(f"credit of {msg.size} is out of range")
        reason = msg.problem(stream.request)
        if reason is not None:
            raise RemoteProtocolError(reason)
        if after != stream.remote_state:
            stream.remote_state = after
            stream.remote_channels = stream.op.data[peer, after]
        if stream.local_final and not msg.FINAL:
            return None  # in flight when we ended the stream: drop
        if isinstance(msg, Credit):
            stream.send_credit += msg.size
        elif isinstance(msg, Eof):
            stream.remote_eof.add(msg.channel)
        if msg.FINAL:
            stream.remote_final = True
            self._maybe_retire(msg.stream, stream)
        return msg

    def _receive_connection_message(self, msg: Message) -> Message | None:
        if not msg.CONNECTION and not isinstance(msg, Error):
            raise RemoteProtocolError(f"{msg.TYPE!r} needs a stream id, got stream 0")
        if isinstance(msg, Error):
            self.state = State.CLOSED
            return msg
        reason = msg.problem(None)
        if reason is not None:
            raise RemoteProtocolError(reason)
        if isinstance(msg, Hello):
            if self._got_hello:
                raise RemoteProtocolError("a second hello")
            self._got_hello = True
            self._versions = frozenset(msg.versions)
            return msg
        if isinstance(msg, Welcome):
            if self.state is not State.HANDSHAKE or not self._sent_hello:
                raise RemoteProtocolError("an unexpected welcome")
            if msg.version not in self._versions:
                raise RemoteProtocolError(f"server chose version {msg.version}, not offered")
            self.version = msg.version
            self.state = State.OPEN
            return msg
        if self.state is not State.OPEN:
            raise RemoteProtocolError(f"{msg.TYPE!r} {self._not_open()}")
        if isinstance(msg, Ping):
            if not self._sent_fatal:
                self._outbound += encode_msg(0, Pong(token=msg.token).to_header())
            return None  # answered here: neither ping nor pong reaches the application
        if isinstance(msg, Pong):
            self._tuner.answered(msg.token, self._windows())  # our window probe's answer?
            return None
        return msg

    def _windows(self) -> list[Window]:
        return [s.recv for s in self._streams.values() if not s.local_final]

    def _receive_data_frame(self, data: Data) -> Data | None:
        if self.state is not State.OPEN:
            raise RemoteProtocolError(f"data {self._not_open()}")
        if data.stream == 0:
            raise RemoteProtocolError("data on stream 0")
        stream = self._known(data.stream)
        if data.channel not in stream.remote_channels:
            raise RemoteProtocolError(self._no_data(stream, _peer(self.role), data.channel))
        if len(data.data) > stream.recv.open:
            raise RemoteProtocolError(f"stream {data.stream} exceeded its flow-control window")
        if stream.local_final:
            stream.recv.open -= len(data.data)  # in flight when we ended it: never consumed
            return None
        stream.recv.received(len(data.data))
        return data

    def _move(self, stream: _Stream, role: Role, state: str, msg: Message,
              error: type[Exception]) -> str:
        """The state ``role``'s half of ``stream`` moves to when it sends ``msg``; raises
        ``error`` if its operation's table does not allow that (streams.py)."""
        after = stream.op.moves.get((role, state, msg.TYPE))
        if after is None:
            raise error(f"a {role.value} may not send {msg.TYPE!r} on {_an(stream.op.name)} "
                        f"stream (its side is {state.replace('_', ' ')})")
        if isinstance(msg, Eof) and msg.channel not in stream.op.data[role, state]:
            raise error(self._no_data(stream, role, msg.channel))
        return after

    def _no_data(self, stream: _Stream, role: Role, channel: int) -> str:
        """Why ``role`` may not send DATA (or eof) on ``channel`` of ``stream`` now."""
        local = role is self.role
        state = stream.local_state if local else stream.remote_state
        if channel in (stream.local_eof if local else stream.remote_eof):
            return f"data on channel {channel} after its eof"
        if role is Role.CLIENT and channel != 0:
            return f"a client may not send on channel {channel}"
        return (f"a {role.value} may not send data on channel {channel} of "
                f"{_an(stream.op.name)} stream (its side is {state.replace('_', ' ')})")

    def _known(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is not None:
            if stream.remote_final:
                raise RemoteProtocolError(f"frame on stream {stream_id} after its final message")
            return stream
        if stream_id <= self._last_stream and stream_id % 2 == 1:
            raise RemoteProtocolError(f"frame for closed stream {stream_id}")
        raise RemoteProtocolError(f"frame for unknown stream {stream_id}")

    def _not_open(self) -> str:
        if self.state is State.HANDSHAKE:
            return "before the handshake finished"
        return "after the connection was closed"

    # --- sending -------------------------------------------------------------------------------

    def send(self, msg: Message, body: bytes = b"") -> bytes:
        """The bytes that carry ``msg``; raises LocalProtocolError if the rules forbid it."""
        if self.role not in msg.SENDERS:
            raise LocalProtocolError(f"a {self.role.value} may not send {msg.TYPE!r}")
        self._check_may_send(fatal_error=isinstance(msg, Error) and msg.stream == 0)
        frame = encode_msg(msg.stream, msg.to_header(), body)  # may refuse: no state changed yet
        if msg.stream == 0:
            self._send_connection_message(msg)
        else:
            self._send_stream_message(msg)
        if self._outbound:
            return self.data_to_send() + frame
        return frame

    def data_to_send(self) -> bytes:
        """The frames the core sent by itself (pongs, credit) since last asked; a driver
        writes them after receiving and after :meth:`consumed`."""
        if not self._outbound:
            return b""
        out = bytes(self._outbound)
        self._outbound.clear()
        return out

    def _check_may_send(self, fatal_error: bool = False) -> None:
        if self._sent_fatal:
            raise LocalProtocolError("a fatal error was already sent: nothing more may follow")
        if self._broken and not fatal_error:
            raise LocalProtocolError("the peer broke the protocol: only a stream-0 error may go")

    def _send_connection_message(self, msg: Message) -> None:
        if isinstance(msg, Error):
            self.state = State.CLOSED
            self._sent_fatal = True
            return
        if not msg.CONNECTION:
            raise LocalProtocolError(f"{msg.TYPE!r} needs a stream id")
        if isinstance(msg, Hello):
            if self._sent_hello:
                raise LocalProtocolError("hello was already sent")
            self._sent_hello = True
            self._versions = frozenset(msg.versions) & frozenset(PROTOCOL_VERSIONS)
        elif isinstance(msg, Welcome):
            if not self._got_hello or self.state is not State.HANDSHAKE:
                raise LocalProtocolError("welcome only answers a hello")
            if msg.version not in self._versions or msg.version not in PROTOCOL_VERSIONS:
                raise LocalProtocolError(f"version {msg.version} is not one both sides speak")
            self.version = msg.version
            self.state = State.OPEN
        elif self.state is not State.OPEN:
            raise LocalProtocolError(f"{msg.TYPE!r} before the handshake finished")

    def _send_stream_message(self, msg: Message) -> None:
        if not self._sendable:
            raise LocalProtocolError(f"cannot send {msg.TYPE!r}: connection is not open")
        if msg.CONNECTION:
            raise LocalProtocolError(f"{msg.TYPE!r} belongs on stream 0")
        if msg.OPENS:
            self._open(msg, LocalProtocolError)
            return
        stream = self._streams.get(msg.stream)
        if stream is None or stream.local_final:
            raise LocalProtocolError(f"stream {msg.stream} is not open for sending")
        after = self._move(stream, self.role, stream.local_state, msg, LocalProtocolError)
        _asks(stream, msg, True, LocalProtocolError)
        if isinstance(msg, Credit):
            self._grant(stream, msg.size)
        elif isinstance(msg, Eof):
            stream.local_eof.add(msg.channel)
        if after != stream.local_state:
            stream.local_state = after
            stream.local_channels = stream.op.data[self.role, after]
        if msg.FINAL:
            stream.local_final = True
            self._maybe_retire(msg.stream, stream)

    @property
    def _sendable(self) -> bool:
        """Whether stream frames may go now: once open, or (a client pipelining its first
        requests, docs/PROTOCOL.md "Pipelining") right behind its hello, before the welcome."""
        if self.state is State.OPEN:
            return True
        return self.state is State.HANDSHAKE and self.role is Role.CLIENT and self._sent_hello

    def send_data(self, stream_id: int, channel: int, data: bytes) -> bytes:
        """The bytes of one DATA frame; the caller must respect :meth:`send_window`."""
        return self.data_prefix(stream_id, channel, len(data)) + data

    def data_prefix(self, stream_id: int, channel: int, size: int) -> bytes:
        """Account for ``size`` bytes of DATA and return the frame prefix (zero-copy sends),
        after any frames the core queued (:meth:`data_to_send`)."""
        if not 0 < size <= MAX_BODY:
            raise LocalProtocolError(f"data chunk of {size} bytes: it must be 1..{MAX_BODY}")
        self._check_may_send()
        stream = self._streams.get(stream_id)
        if not self._sendable or stream is None or stream.local_final:
            raise LocalProtocolError(f"stream {stream_id} is not open for sending")
        if channel not in stream.local_channels:
            if channel in stream.local_eof:
                raise LocalProtocolError(f"channel {channel} of stream {stream_id} already ended")
            raise LocalProtocolError(self._no_data(stream, self.role, channel))
        if size > stream.send_credit:
            raise LocalProtocolError(f"stream {stream_id} has only {stream.send_credit} credit")
        stream.send_credit -= size
        if self._outbound:
            return self.data_to_send() + encode_data_prefix(stream_id, channel, size)
        return encode_data_prefix(stream_id, channel, size)

    def send_window(self, stream_id: int) -> int:
        """How many DATA bytes may be sent on the stream now (0 if it is not open)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_final:
            return 0
        return stream.send_credit

    def consumed(self, stream_id: int, size: int) -> None:
        """Record that the application used ``size`` received bytes; once a quarter of the
        stream's window is due the core grants credit (a ``credit`` frame in
        :meth:`data_to_send`), with a window probe (a ``ping``) riding along on a bulk stream
        while tuning is on and no probe is out."""
        if size < 0:
            raise LocalProtocolError(f"cannot consume {size} bytes")
        stream = self._streams.get(stream_id)
        if (stream is None or stream.local_final or self.state is not State.OPEN or self._broken
                or self._sent_fatal):
            return
        stream.recv.consumed(size)
        self._tuner.relieve(stream.recv)
        due = stream.recv.due()
        if not due or (self.role, stream.local_state, "credit") not in stream.op.moves:
            return  # not yet; or the peer sends no DATA here (its DATA was refused)
        self._outbound += encode_msg(stream_id, Credit(size=due, stream=stream_id).to_header())
        self._grant(stream, due)
        token = self._tuner.probe(self._windows()) if stream.recv.bulk else None
        if token is not None:
            self._outbound += encode_msg(0, Ping(token=token).to_header())

    def next_stream_id(self) -> int:
        """The id for the next stream this (client) side opens."""
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client opens streams")
        return self._last_stream + 2 if self._last_stream > 0 else 1

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def states(self, stream_id: int) -> tuple[str, str] | None:
        """The (client's, server's) half-states of an open stream (streams.py), else None."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if self.role is Role.CLIENT:
            return stream.local_state, stream.remote_state
        return stream.remote_state, stream.local_state

    def can_send(self, stream_id: int) -> bool:
        """True while neither side has ended the stream (data sent now would be used)."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.local_final and not stream.remote_final

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return self._decoder.buffered

    @property
    def queued(self) -> int:
        """Bytes of complete frames received but not yet returned by :meth:`next_event`."""
        return self._decoder.queued

    def take_unread(self) -> bytes | None:
        """The bytes received and not yet returned as events, as they came (see
        :meth:`FrameDecoder.take_unread`); this connection will not see them again."""
        return self._decoder.take_unread()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def unclosed(self) -> int:
        """Streams this side ended whose peer has not ended them yet (a client that never sends
        ``close`` after the server's final message grows this)."""
        return sum(1 for s in self._streams.values() if s.local_final and not s.remote_final)

    # --- shared --------------------------------------------------------------------------------

    def _open(self, msg: Message, error: type[Exception]) -> None:
        stream_id = msg.stream
        if stream_id % 2 != 1 or stream_id <= self._last_stream:
            raise error(f"stream id {stream_id} must be odd and above {self._last_stream}")
        self._last_stream = stream_id
        stream = self._streams[stream_id] = _Stream(msg, self.role)
        self._tuner.opened(stream.recv)

    @staticmethod
    def _grant(stream: _Stream, size: int) -> None:
        """Open our receive window by ``size``, as a credit frame tells the peer."""
        if not 0 < size <= MAX_CREDIT or stream.recv.open + size > MAX_CREDIT:
            raise LocalProtocolError(f"credit of {size} is out of range")
        stream.recv.open += size

    def _maybe_retire(self, stream_id: int, stream: _Stream) -> None:
        if stream.local_final and stream.remote_final:
            del self._streams[stream_id]
        if stream.local_final:
            self._tuner.closed(stream.recv)  # no more credit: its window is free for others

    def window(self, stream_id: int) -> int:
        """The receive window the stream is tuned to now (0 if it is not open for receiving)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None or stream.local_final else stream.recv.size

    @property
    def held(self) -> int:
        """DATA bytes received on open streams and not yet consumed by the application."""
        return sum(w.held for w in self._windows())

