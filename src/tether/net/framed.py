"""A framed tether connection over an asyncio (reader, writer) pair.

It drives :class:`tether.protocol.Connection`: reads bytes into it, hands events to one reader,
writes the bytes it produces, and makes DATA senders wait for flow-control credit. Credit frames
are consumed here and never reach the application. OSError and ssl errors become tether errors at
this boundary (:func:`tether.net.translate.translate`).
"""

from __future__ import annotations

import asyncio
import contextlib

from tether.errors import (
    ConnectionBroken,
    ConnectionClosed,
    ConnectionFailed,
    ProtocolError,
    TetherError,
    from_wire,
)
from tether.net.translate import translated
from tether.protocol import (
    CLOSED,
    MAX_BODY,
    NEED_DATA,
    Connection,
    Credit,
    Data,
    Error,
    Message,
    Role,
)

READ_SIZE = 256 * 1024


class FramedConnection:
    """One peer connection: ``next_event`` for the single reader, ``send*`` for anyone."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: Role
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.proto = Connection(role)
        self._credit: dict[int, asyncio.Event] = {}
        self._closed = False
        self._error: TetherError | None = None
        self.frame_timeout: float | None = None  # a started frame must complete in this time
        self.idle_timeout: float | None = None  # with no stream open, close after this long
        self._partial_since: float | None = None
        self._eof = False

    @property
    def peer_cert(self) -> bytes | None:
        sslobj = self.writer.get_extra_info("ssl_object")
        return sslobj.getpeercert(binary_form=True) if sslobj is not None else None

    @property
    def peer_address(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    # --- receiving -----------------------------------------------------------------------------

    async def next_event(self) -> Message | Data:
        """The next message or data; raises ConnectionBroken at EOF, ProtocolError on violations.

        Any failure also wakes every sender waiting for credit, so nothing waits forever.
        """
        try:
            return await self._next_event()
        except ProtocolError as exc:
            if not self._eof:
                self._fail(exc)
                raise
            # the peer or the network cut a frame short: a broken connection, not a violation
            broken = ConnectionBroken(f"connection lost: {exc}")
            self._fail(broken)
            raise broken from None
        except TetherError as exc:
            self._fail(exc)
            raise

    async def _next_event(self) -> Message | Data:
        while True:
            event = self.proto.next_event()
            if event is NEED_DATA:
                data = await self._read()
                self._eof = not data
                self.proto.receive_data(data)
                continue
            if event is CLOSED:
                raise ConnectionBroken("connection closed by peer")
            assert not isinstance(event, type(NEED_DATA))
            self._partial_since = None  # a frame completed: the frame deadline starts anew
            if isinstance(event, Credit):
                self._wake(event.stream)
                continue
            if isinstance(event, Error) and event.stream == 0:
                # the peer ends the connection: whoever waits for credit must hear it now
                self._fail(from_wire(event.code, event.message))
            elif event.FINAL if isinstance(event, Message) else False:
                self._wake(event.stream)
            return event

    async def _read(self) -> bytes:
        """The next bytes, within the deadline that applies now (slowloris, idle peers)."""
        loop = asyncio.get_running_loop()
        if self.proto.buffered and self.frame_timeout is not None:
            if self._partial_since is None:
                self._partial_since = loop.time()
            deadline: float | None = self._partial_since + self.frame_timeout - loop.time()
            why = "a frame took too long to arrive"
        elif self.proto.open_streams == 0:
            deadline, why = self.idle_timeout, "idle for too long"
        else:
            deadline, why = None, ""
        with translated():
            try:
                return await asyncio.wait_for(self.reader.read(READ_SIZE),
                                              None if deadline is None else max(deadline, 0))
            except TimeoutError:
                raise ConnectionFailed(why) from None

    def consumed(self, stream: int, size: int) -> None:
        """The application has used ``size`` bytes of the stream's data: grant credit if due."""
        frame = self.proto.consumed(stream, size)
        if frame and not self._closed:
            self.writer.write(frame)

    # --- sending -------------------------------------------------------------------------------

    def send(self, msg: Message, body: bytes = b"") -> None:
        """Queue a message for sending (call :meth:`drain` to apply back-pressure)."""
        self._check_usable()
        self.writer.write(self.proto.send(msg, body))
        if msg.FINAL:
            self._wake(msg.stream)

    async def drain(self) -> None:
        self._check_usable()
        with translated():
            await self.writer.drain()

    async def send_data(self, stream: int, channel: int, data: bytes | memoryview) -> None:
        """Send ``data`` as DATA frames, waiting for credit; raises if the stream ends first."""
        view = memoryview(data)
        while view:
            if not self.proto.can_send(stream):
                self._check_usable()
                raise ConnectionClosed(f"stream {stream} ended")
            window = self.proto.send_window(stream)
            if window == 0:
                await self._wait_credit(stream)
                continue
            size = min(window, MAX_BODY, len(view))
            self._check_usable()
            self.writer.write(self.proto.data_prefix(stream, channel, size))
            self.writer.write(view[:size])
            view = view[size:]
            await self.drain()

    async def _wait_credit(self, stream: int) -> None:
        event = self._credit.setdefault(stream, asyncio.Event())
        event.clear()
        await event.wait()
        self._check_usable()

    def _wake(self, stream: int) -> None:
        event = self._credit.pop(stream, None)
        if event is not None:
            event.set()

    # --- closing -------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ConnectionClosed("connection is closed")

    def _fail(self, error: TetherError) -> None:
        if self._error is None:
            self._error = error
        for event in self._credit.values():
            event.set()
        self._credit.clear()

    async def fail(self, error: TetherError) -> None:
        """Tell the peer why (a stream-0 error frame, where still possible) and close."""
        if not self._closed and not isinstance(self._error, ConnectionFailed):
            with contextlib.suppress(Exception):  # the transport may already be gone
                self.writer.write(self.proto.send(Error(code=error.code, message=str(error))))
        self._fail(error)
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail(self._error or ConnectionClosed("connection is closed"))
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
