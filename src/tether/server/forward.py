"""Forwarding on the server: ``connect`` streams (:class:`Pipe`, a socket to a destination)
and ``listen`` streams (:class:`Listener`, a socket whose connections are announced to the
client and taken by its ``connect{listener, incoming}``), one :class:`Forwards` per session.

A pipe's two directions are independent: bytes from the client are written to the socket and
credit is granted only once the socket took them, so a slow destination holds back only its own
stream; bytes from the destination go out under the client's credit. Each side's end of input
(``eof``, or the socket reading end-of-file) shuts down the other's writing side: half-close
goes through. Every pipe is audited when it ends (who, from, to, bytes each way, duration).
Listeners close with their stream and with the connection: no port is left bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tether.errors import BadRequest, Busy, NotFound, RemoteError, TetherError
from tether.net.framed import FramedConnection
from tether.protocol import (
    Connect,
    Connected,
    Done,
    Eof,
    Error,
    Incoming,
    Listen,
    Listening,
    Message,
)
from tether.server.audit import AuditLog
from tether.server.context import Peer
from tether.server.permits import ForwardPolicy

log = logging.getLogger("tether.server")

CONNECT_TIMEOUT = 30.0  # seconds to reach a destination
TAKE_TIMEOUT = 30.0  # an incoming connection the client does not take by then is closed
MAX_PENDING = 64  # incoming connections waiting to be taken, per listener
EARLY_MAX = 256 * 1024  # bytes a client may send before connected (its window is 4 MiB)
CHUNK = 256 * 1024  # bytes read from a socket at once
LIMIT = 4 * CHUNK  # a socket's read buffer and write high-water mark (asyncio: 64 KiB)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def address(peer: Any) -> str:
    """A socket's peer or local address as ``host:port`` (``unix`` for a Unix socket)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unix"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's text names the address, not why
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or exc.__class__.__name__


class Pipe:
    """One ``connect`` stream: a socket to its destination, bytes both ways."""

    def __init__(self, conn: FramedConnection, stream: int, target: str, origin: str,
                 opening: Callable[[], Awaitable[Streams]], audit: Callable[[Pipe], None]
                 ) -> None:
        self.conn = conn
        self.stream = stream
        self.target = target
        self.origin = origin
        self._opening = opening
        self._audit = audit
        self.writer: asyncio.StreamWriter | None = None
        self._queue: deque[bytes | bytearray] = deque()
        self._ready = asyncio.Event()
        self._client_eof = False
        self._final = False
        self.received = 0  # from the client, written to the destination
        self.sent = 0  # from the destination, sent to the client
        self.started = time.monotonic()
        self.outcome = "ok"
        self.task: asyncio.Task[None] | None = None

    # --- the session's calls -------------------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes from the client: written in order, credit granted once the socket took them."""
        if self._client_eof:
            self.conn.consumed(self.stream, len(data))
            return
        self._queue.append(data)
        self._ready.set()
        if self.writer is None and sum(map(len, self._queue)) > EARLY_MAX:
            # a destination that never answers must not hold 4 MiB per stream for 30 s
            raise Busy(f"more than {EARLY_MAX // 1024} KiB sent before {self.target} was "
                       f"reached")

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Eof):
            self._client_eof = True
            self._ready.set()
        else:
            raise BadRequest(f"unexpected {msg.TYPE!r} on a forwarded connection")

    def abandon(self) -> None:
        """The client closed the stream (or left): close the socket at once, end our half."""
        if self.task is not None:
            self.task.cancel()
        if self.outcome == "ok":
            self.outcome = "closed by the client"
        self._close(abort=True)
        # our final goes after whatever the session sends now (its error, when it ended the
        # stream itself; then this one is refused by the core and dropped)
        final: Message = (Done(stream=self.stream) if self.writer is not None else
                          Error(code="failed", message="abandoned by the client",
                                stream=self.stream))  # still connecting: only an error
        asyncio.get_running_loop().call_soon(self._finish, final)

    # --- the connection's life -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, pump both ways until both directions ended, then ``done``."""
        try:
            try:
                reader, writer = await asyncio.wait_for(self._opening(), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                self._final = True  # the session sends the error
                self.outcome = f"cannot connect: {_reason(exc)}"
                log.info("forward to %s refused for stream %d: %s", self.target, self.stream,
                         _reason(exc))
                raise RemoteError(f"cannot connect to {self.target}: {_reason(exc)}") from None
            self.writer = writer
            writer.transport.set_write_buffer_limits(high=LIMIT)
            peer = writer.get_extra_info("peername")
            host, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
            self.conn.send(Connected(host=host, port=port, stream=self.stream))
            writing = asyncio.create_task(self._write(writer))
            try:
                await self._read(reader)
                await writing
            finally:
                writing.cancel()
            self._finish(Done(stream=self.stream))
            await self.conn.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._final = True  # the session sends the error
            self.outcome = f"reset: {_reason(exc)}"
            raise RemoteError(f"{self.target}: the connection was reset") from None
        except TetherError as exc:
            self._final = True
            if self.outcome == "ok":
                self.outcome = str(exc)
            raise
        finally:
            self._close(abort=False)
            self._audit(self)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(CHUNK):
            await self.conn.send_data(self.stream, 0, data)
            self.sent += len(data)
        self.conn.send(Eof(channel=0, stream=self.stream))

    async def _write(self, writer: asyncio.StreamWriter) -> None:
        """The client's bytes, in order; once the destination stopped reading (it closed),
        the rest is discarded and still acknowledged, as a closed pipe's stdin is."""
        broken = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                data = self._queue.popleft()
                if not broken:
                    try:
                        writer.write(data)
                        await writer.drain()
                        self.received += len(data)
                    except (ConnectionResetError, BrokenPipeError):
                        broken = True
                self.conn.consumed(self.stream, len(data))
            if self._client_eof:
                if not broken and writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return

    def _finish(self, final: Message) -> None:
        if not self._final:
            self._final = True
            with contextlib.suppress(TetherError):
                self.conn.send(final)

    def _close(self, abort: bool) -> None:
        writer = self.writer
        if writer is None:
            return
        if abort:
            writer.transport.abort()
        else:
            writer.close()


class Listener:
    """One ``listen`` stream: a listening socket whose connections wait to be taken."""

    def __init__(self, conn: FramedConnection, stream: int, where: str) -> None:
        self.conn = conn
        self.stream = stream
        self.where = where
        self.server: asyncio.Server | None = None
        self.path: Path | None = None  # a Unix socket we made: removed when closed
        self.pending: dict[int, tuple[Streams, asyncio.TimerHandle]] = {}
        self._next = 0
        self._closed = False
        self.task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, path: str) -> None:
        try:
            if path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(path)  # never unlinks what is there (asyncio would)
                except OSError:
                    sock.close()
                    raise
                self.path = Path(path)
                self.server = await asyncio.start_unix_server(self._accepted, sock=sock,
                                                              backlog=1024, limit=LIMIT)
                self.conn.send(Listening(path=path, stream=self.stream))
                return
            self.server = await asyncio.start_server(self._accepted, host, port,
                                                     reuse_address=True, backlog=1024,
                                                     limit=LIMIT)
        except OSError as exc:
            raise RemoteError(f"cannot listen on {self.where}: {_reason(exc)}") from None
        bound = self.server.sockets[0].getsockname()
        self.conn.send(Listening(host=str(bound[0]), port=int(bound[1]), stream=self.stream))

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin = address(writer.get_extra_info("peername"))
        if self._closed or len(self.pending) >= MAX_PENDING:
            log.warning("listener %s: %d connections wait to be taken; closed one from %s",
                        self.where, len(self.pending), origin)
            writer.transport.abort()
            return
        self._next += 1
        ident = self._next
        timer = asyncio.get_running_loop().call_later(TAKE_TIMEOUT, self._expire, ident)
        self.pending[ident] = ((reader, writer), timer)
        try:
            self.conn.send(Incoming(id=ident, origin=origin, stream=self.stream))
        except TetherError:
            self._expire(ident)

    def _expire(self, ident: int) -> None:
        entry = self.pending.pop(ident, None)
        if entry is not None:
            entry[1].cancel()
            entry[0][1].transport.abort()

    def take(self, ident: int) -> Streams:
        entry = self.pending.pop(ident, None)
        if entry is None:
            raise NotFound(f"no incoming connection {ident} waits on this listener")
        entry[1].cancel()
        return entry[0]

    async def run(self) -> None:
        """Nothing to do but wait: connections arrive through the server's callback."""
        await asyncio.Event().wait()

    def feed(self, data: bytes | bytearray) -> None:
        pass  # the core refuses DATA on a listen stream

    def handle(self, msg: Message) -> None:
        pass  # likewise every message but close and error

    def abandon(self) -> None:
        """Close the socket and what waits on it, remove a socket file we made, end the stream."""
        if self._closed:
            return
        self._closed = True
        if self.task is not None:
            self.task.cancel()
        if self.server is not None:
            self.server.close()
        for ident in list(self.pending):
            self._expire(ident)
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        asyncio.get_running_loop().call_soon(self._done)  # after an error the session sends

    def _done(self) -> None:
        with contextlib.suppress(TetherError):
            self.conn.send(Done(stream=self.stream))


class Forwards:
    """One session's forwarding: its policy, listeners by stream, and the audit of its pipes."""

    def __init__(self, conn: FramedConnection, policy: ForwardPolicy, audit: AuditLog,
                 max_pipes: int) -> None:
        self.conn = conn
        self.policy = policy
        self.audit = audit
        self.max_pipes = max_pipes
        self.listeners: dict[int, Listener] = {}
        self.pipes: dict[int, Pipe] = {}

    def connect(self, msg: Connect, peer: Peer) -> Pipe:
        """A pipe for ``msg`` (not yet connected), or the RemoteError that refuses it."""
        if len(self.pipes) >= self.max_pipes:
            raise BadRequest(f"too many forwarded connections at once on one connection "
                             f"(limit {self.max_pipes}, serve --max-forwards-per-connection)")
        opening: Callable[[], Awaitable[Streams]]
        if msg.listener:
            listener = self.listeners.get(msg.listener)
            if listener is None:
                raise NotFound(f"stream {msg.listener} is not a listener of this connection")
            streams = listener.take(msg.incoming)
            origin = address(streams[1].get_extra_info("peername"))
            target = f"the client, from listener {listener.where}"

            async def taken() -> Streams:
                return streams
            opening = taken
        else:
            path = self._path(msg.path, peer) if msg.path else ""
            self.policy.check_connect(msg.host, msg.port, path, peer.confined)
            origin, target = msg.origin or "client", path or msg.target
            if path:
                opening = lambda: asyncio.open_unix_connection(path, limit=LIMIT)  # noqa: E731
            else:
                opening = lambda: asyncio.open_connection(  # noqa: E731
                    msg.host, msg.port, limit=LIMIT)
        pipe = Pipe(self.conn, msg.stream, target, origin, opening,
                    lambda p: self._audited(p, peer))
        self.pipes[msg.stream] = pipe
        return pipe

    async def listen(self, msg: Listen, peer: Peer) -> Listener:
        path = self._path(msg.path, peer) if msg.path else ""
        host = self.policy.bind_address(msg.host, msg.port, path, peer.confined)
        where = path or (f"[{host}]:{msg.port}" if ":" in host else f"{host}:{msg.port}")
        listener = Listener(self.conn, msg.stream, where)
        await listener.start(host, msg.port, path)
        if not path and listener.server is not None:
            listener.where = address(listener.server.sockets[0].getsockname())
        self.listeners[msg.stream] = listener
        log.info("listening on %s for %s (stream %d)", listener.where, peer.label, msg.stream)
        self.audit.event("listen", fingerprint=peer.fingerprint, name=peer.name,
                         address=listener.where, outcome="ok")
        return listener

    def ended(self, stream: int) -> None:
        self.pipes.pop(stream, None)
        listener = self.listeners.pop(stream, None)
        if listener is not None:
            listener.abandon()

    @staticmethod
    def _path(path: str, peer: Peer) -> str:
        """A socket path as the server uses it: relative to the client's root."""
        return str(peer.root / path) if not path.startswith("/") else path

    def _audited(self, pipe: Pipe, peer: Peer) -> None:
        self.pipes.pop(pipe.stream, None)
        self.audit.event("forward", fingerprint=peer.fingerprint, name=peer.name,
                         **{"from": pipe.origin}, to=pipe.target, bytes_in=pipe.received,
                         bytes_out=pipe.sent,
                         duration=round(time.monotonic() - pipe.started, 6),
                         outcome=pipe.outcome)
