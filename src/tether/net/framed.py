"""A framed tether connection over an asyncio transport.

:class:`FramedProtocol` receives bytes straight into :class:`tether.protocol.Connection`'s
buffers (asyncio's ``BufferedProtocol``: ``recv_into`` for TCP, ``SSLObject.read`` into our
buffer for TLS), so a large DATA body is written once, by the kernel or by decryption, and handed
to the application as it is. :class:`FramedConnection` hands events to one reader, writes the
bytes the core produces (its own pongs and credit included: ``data_to_send``), and makes
DATA senders wait for flow-control credit; ``credit`` events only wake those senders and never
reach the application. The keepalive's timing (:attr:`FramedConnection.keepalive`) lives
here, so a peer that vanished without a FIN is noticed while streams are open. OSError and ssl
errors become tether errors at this boundary (:func:`tether.net.translate.translate`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tether.errors import (
    ConnectionBroken,
    ConnectionClosed,
    ConnectionFailed,
    ProtocolError,
    TetherError,
    from_wire,
)
from tether.net.translate import translate, translated
from tether.protocol import (
    CLOSED,
    MAX_BODY,
    NEED_DATA,
    Connection,
    Credit,
    Data,
    Error,
    Message,
    Ping,
    Refused,
    Role,
)

HIGH_WATER = 2 * 1024 * 1024  # complete frames waiting for the reader: stop receiving above
LOW_WATER = HIGH_WATER // 4  # ...and receive again below this
KEEPALIVE_COUNT = 3  # silent keepalive intervals before the peer is declared gone (ssh's default)


class FramedProtocol(asyncio.BufferedProtocol):
    """The asyncio end of one connection: bytes are received straight into the protocol
    core's buffers (``get_buffer``), and reading pauses while complete frames pile up unread,
    so memory stays bounded however far the application lags."""

    def __init__(self, role: Role) -> None:
        self.proto = Connection(role)
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None  # set when the transport is gone
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False  # complete frames pile up unread here
        self._write_paused = False  # our writes pile up unread by the peer
        self._held_off = False  # told to stop reading from outside (a byte budget)
        self._read_paused = False  # what the transport was told
        self.watcher: Callable[[], None] | None = None  # told when held bytes may have changed
        self._drainers: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        self._gone = loop.create_future()
        self._clock = loop.time
        self.heard = loop.time()  # when bytes last arrived: any frame is a sign of life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.proto.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        started = self.proto.buffered == 0  # a frame began: the reader's deadline changes
        self.heard = self._clock()
        self.proto.buffer_updated(nbytes)
        queued = self.proto.queued
        if queued >= HIGH_WATER and not self._paused:
            self._paused = True
            self._reading()
        if queued or started:
            self._wake()
        self.changed()

    def eof_received(self) -> bool:
        self.eof = True
        self.proto.receive_data(b"")
        self._wake()
        # over TLS the transport must close; over TCP keep our sending side open (half-close)
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("Connection lost")
        if not self._gone.done():
            self._gone.set_result(None)
        if not self.eof and exc is None:
            self.eof = True
            self.proto.receive_data(b"")
        self._wake()
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    def pause_writing(self) -> None:
        """Our replies pile up unread (pongs, errors a peer asked for and never reads): a server
        stops reading until they drain, so a peer cannot make it buffer without bound."""
        self._write_paused = True
        self._reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._reading()
        self.changed()
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    @property
    def held(self) -> int:
        """Bytes this connection holds in memory: received and not yet taken, and written and
        not yet sent."""
        out = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.proto.buffered + self.proto.queued + out

    def hold_off(self, paused: bool) -> None:
        """Stop (or resume) reading for a reason outside this connection (server/buffers.py)."""
        self._held_off = paused
        self._reading()

    def changed(self) -> None:
        if self.watcher is not None:
            self.watcher()

    # --- for FramedConnection ------------------------------------------------------------------

    def taken(self) -> None:
        """The reader took an event: receive again if enough of the backlog is gone."""
        if self._paused and self.proto.queued < LOW_WATER:
            self._paused = False
            self._reading()
        self.changed()

    def _reading(self) -> None:
        """Receive unless frames pile up unread here, (on the server) our writes do there, or
        we were told to hold off."""
        want = not self._paused and not self._held_off and not (
            self._write_paused and self.proto.role is Role.SERVER)
        if self.transport is None or want != self._read_paused:
            return
        self._read_paused = not want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    async def wait_bytes(self, timeout: float | None) -> bool:
        """Wait until something arrives or the connection ends; False if ``timeout`` passed."""
        if self.eof or self.lost is not None:
            return True
        self.taken()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            self._wake()

        timer = None if timeout is None else loop.call_later(timeout, expire)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return not expired

    async def drain(self) -> None:
        """Wait while our writes pile up; raise once the transport is gone. It always yields
        once: a write that failed underneath (a reset peer) only schedules
        :meth:`connection_lost`, and a sender that never yields would go on writing into the
        dead transport, which drops the bytes and logs a warning for each write."""
        if self.lost is None and not self._write_paused:
            await asyncio.sleep(0)
        if self.lost is not None:
            raise self.lost
        if self._write_paused:
            fut = asyncio.get_running_loop().create_future()
            self._drainers.append(fut)
            await fut
            if self.lost is not None:
                raise self.lost

    async def closed(self) -> None:
        """Wait until the transport is gone."""
        await asyncio.shield(self._gone)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class FramedConnection:
    """One peer connection: ``next_event`` for the single reader, ``send*`` for anyone."""

    def __init__(self, link: FramedProtocol) -> None:
        assert link.transport is not None, "the protocol must be connected"
        self.link = link
        self.transport: asyncio.Transport = link.transport
        self.proto = link.proto
        self._credit: dict[int, asyncio.Event] = {}
        self._closed = False
        self._error: TetherError | None = None
        self.frame_timeout: float | None = None  # a started frame must complete in this time
        self.idle_timeout: float | None = None  # with no stream open, close after this long
        self.keepalive: float | None = None  # ping after this much silence (see _keepalive)
        self._partial_since: float | None = None
        self._idle_since: float | None = None  # no stream open and no frame but pings since
        self._probes = 0  # pings sent since bytes last arrived
        self._probed_after = link.heard  # the arrival time those pings counted from

    @property
    def peer_cert(self) -> bytes | None:
        sslobj = self.transport.get_extra_info("ssl_object")
        return sslobj.getpeercert(binary_form=True) if sslobj is not None else None

    @property
    def peer_address(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    # --- receiving -----------------------------------------------------------------------------

    async def next_event(self) -> Message | Data | Refused:
        """The next message or data; raises ConnectionBroken at EOF, ProtocolError on violations.

        Any failure also wakes every sender waiting for credit, so nothing waits forever.
        """
        try:
            return await self._next_event()
        except ProtocolError as exc:
            if not self.link.eof:
                self._fail(exc)
                raise
            # the peer or the network cut a frame short: a broken connection, not a violation
            broken = ConnectionBroken(f"connection lost: {exc}")
            self._fail(broken)
            raise broken from None
        except TetherError as exc:
            self._fail(exc)
            raise

    async def _next_event(self) -> Message | Data | Refused:
        while True:
            event = self.proto.next_event()
            if event is NEED_DATA:
                self._flush()  # what the core answered by itself (pongs) goes before we wait
                await self._wait_bytes()
                continue
            if event is CLOSED:
                raise ConnectionBroken("connection closed by peer")
            assert not isinstance(event, type(NEED_DATA))
            self.link.taken()
            self._partial_since = None  # a frame completed: the frame deadline starts anew
            self._idle_since = None  # (pings and pongs, which the core absorbs, do not count)
            if isinstance(event, Credit):
                self._wake(event.stream)
                continue
            if isinstance(event, Error) and event.stream == 0:
                # the peer ends the connection: whoever waits for credit must hear it now
                self._fail(from_wire(event.code, event.message))
            elif event.FINAL if isinstance(event, Message) else False:
                self._wake(event.stream)
            return event

    async def _wait_bytes(self) -> None:
        """Wait for more bytes, within the deadline that applies now (slowloris, idle peers),
        pinging a silent peer on the way (:meth:`_keepalive`)."""
        link = self.link
        if link.lost is not None and not link.eof:
            raise translate(link.lost)
        loop = asyncio.get_running_loop()
        if self.proto.buffered and self.frame_timeout is not None:
            if self._partial_since is None:
                self._partial_since = loop.time()
            end: float | None = self._partial_since + self.frame_timeout
            why = "a frame took too long to arrive"
        elif self.proto.open_streams == 0 and self.idle_timeout is not None:
            if self._idle_since is None:
                self._idle_since = loop.time()
            end, why = self._idle_since + self.idle_timeout, "idle for too long"
        else:
            self._idle_since = None
            end, why = None, ""
        while True:
            now = loop.time()
            wait = None if end is None else max(end - now, 0)
            ping_in = self._keepalive(now)
            if ping_in is not None and (wait is None or ping_in < wait):
                if await link.wait_bytes(ping_in):
                    return
                continue
            if not await link.wait_bytes(wait):
                raise ConnectionFailed(why)
            return

    def _keepalive(self, now: float) -> float | None:
        """Seconds until the keepalive must act again (None: it is off). After each interval of
        silence it pings; after :data:`KEEPALIVE_COUNT` silent intervals the peer is gone: the
        connection is aborted (no FIN to wait for) and ConnectionBroken says so."""
        interval = self.keepalive
        if not interval or self._closed:
            return None
        heard = self.link.heard
        if heard != self._probed_after:
            self._probed_after, self._probes = heard, 0
        due = heard + interval * (self._probes + 1)
        if now < due:
            return due - now
        if self._probes + 1 >= KEEPALIVE_COUNT:
            peer = "server" if self.proto.role is Role.CLIENT else "client"
            self.transport.abort()
            raise ConnectionBroken(
                f"no answer from the {peer} for {interval * KEEPALIVE_COUNT:g} s")
        self._probes += 1
        self.transport.write(self.proto.send(Ping(token=self._probes)))
        return interval

    def consumed(self, stream: int, size: int) -> None:
        """The application has used ``size`` bytes of the stream's data (the core grants
        credit when due)."""
        self.proto.consumed(stream, size)
        self._flush()

    def _flush(self) -> None:
        """Write the frames the core sent by itself (pongs, credit)."""
        out = self.proto.data_to_send()
        if out and not self._closed and self._error is None and self.link.lost is None:
            self.transport.write(out)
        self.link.changed()

    # --- sending -------------------------------------------------------------------------------

    def send(self, msg: Message, body: bytes = b"") -> None:
        """Queue a message for sending (call :meth:`drain` to apply back-pressure). Once the
        transport is gone it is dropped here, not written into the dead transport (which
        would log a warning per write); the reader reports the failure."""
        self._check_usable()
        frame = self.proto.send(msg, body)
        if self.link.lost is None:
            self.transport.write(frame)
        if msg.FINAL:
            self._wake(msg.stream)
        self.link.changed()

    async def drain(self) -> None:
        self._check_usable()
        with translated():
            await self.link.drain()

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
            if self.link.lost is not None:  # gone since the last chunk: say so, write nothing
                raise translate(self.link.lost)
            self.transport.write(self.proto.data_prefix(stream, channel, size))
            self.transport.write(view[:size])
            view = view[size:]
            self.link.changed()
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
                self.transport.write(self.proto.send(Error(code=error.code, message=str(error))))
        self._fail(error)
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail(self._error or ConnectionClosed("connection is closed"))
        with contextlib.suppress(Exception):
            self.transport.close()
            await asyncio.wait_for(self.link.closed(), 2)
