"""Forwarding on the client (ssh's ``-L``, ``-R``, ``-D``): local listeners whose connections
become ``connect`` streams, remote listeners whose connections come back here, a SOCKS5 front
(names resolved by the server), and :func:`open_connection`, a stream pair to a destination
seen from the server.

Each forwarded connection is one stream: bytes from the local socket go out under the
server's credit and bytes from the server are written to the local socket before more credit
is granted, so a slow reader holds back only its own stream. End of input travels each way as
``eof`` (half-close); a refused destination closes the local socket at once and says so in one
line through ``on_event`` (the CLI prints it; the default logs it on ``tether.client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tether.errors import ConnectionClosed, ConnectionFailed, TetherError
from tether.protocol import (
    Connect,
    Connected,
    Data,
    Done,
    Eof,
    Incoming,
    Listen,
    Listening,
    Message,
)

if TYPE_CHECKING:
    from typing import Protocol

    from tether.client.process import StreamHandle
    from tether.net.framed import FramedConnection

    class Connection(Protocol):  # what forwarding needs of tether.client.api.Connection
        _framed: FramedConnection

        def open_stream(self, opener: type[Message], **fields: Any) -> StreamHandle: ...

log = logging.getLogger("tether.client")

CHUNK = 256 * 1024
LIMIT = 4 * CHUNK  # a socket's read buffer and write high-water mark (asyncio: 64 KiB)
BACKLOG = 1024  # connections arriving at once (asyncio: 100, too few for a burst)
Report = Callable[[str], None]


def _origin(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return "unix"


def where(host: str, port: int, path: str = "") -> str:
    if path:
        return path
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_stream(conn: Connection, **fields: Any) -> tuple[StreamHandle, Connected]:
    """A ``connect`` stream, once the server answered ``connected``; its error is raised."""
    from tether.client.process import StreamHandle

    handle = conn.open_stream(Connect, **fields)
    assert isinstance(handle, StreamHandle)
    await conn._framed.drain()
    try:
        event = await handle.next()
    except BaseException:
        handle.abandon()
        raise
    if not isinstance(event, Connected):  # the core allows nothing else first
        handle.abandon()
        raise ConnectionFailed(f"unexpected {type(event).__name__} on a forwarded connection")
    return handle, event


async def pipe(handle: StreamHandle, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
    """Carry bytes both ways between a local socket and a stream until both directions ended
    (or either side broke: then the local socket is reset and the stream abandoned)."""
    writer.transport.set_write_buffer_limits(high=LIMIT)
    up = asyncio.create_task(_up(handle, reader))
    try:
        while True:
            event = await handle.next()
            if isinstance(event, Data):
                writer.write(event.data)
                await writer.drain()
            elif isinstance(event, Eof):
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
            elif isinstance(event, Done):
                break
        await up
        writer.close()
    except (TetherError, OSError):
        writer.transport.abort()
        raise
    finally:
        up.cancel()
        handle.abandon()


async def _up(handle: StreamHandle, reader: asyncio.StreamReader) -> None:
    try:
        while data := await reader.read(CHUNK):
            await handle.send_data(data)
        handle.send(Eof(channel=0, stream=handle.stream))
    except (ConnectionResetError, BrokenPipeError):
        handle.abandon()  # the local side reset: the server closes its socket at once


async def carry(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                report: Report, what: str, **fields: Any) -> None:
    """One connection forwarded over a ``connect`` stream opened with ``fields`` (a local one
    names its origin, the peer of ``writer``, unless ``fields`` does: an incoming ``-R``
    connection's stream names the listener and the connection instead); a refusal closes the
    local socket at once and is reported in one line."""
    if "incoming" not in fields:
        fields.setdefault("origin", _origin(writer))
    try:
        handle, _ = await open_stream(conn, **fields)
    except TetherError as exc:
        report(f"{what}: {exc}")
        writer.transport.abort()
        return
    try:
        await pipe(handle, reader, writer)
    except (TetherError, OSError) as exc:
        _unless_ours(report, f"{what}: {exc}", exc)


def _unless_ours(report: Report, line: str, exc: BaseException) -> None:
    """Report a failed connection, unless it failed because we closed the connection."""
    if not isinstance(exc, ConnectionClosed):
        report(line)


class Forwarder:
    """A running forward: its listener, the connections it carries, and :meth:`close`
    (also ``async with``). ``host``/``port`` (or ``path``) is where it listens."""

    def __init__(self, kind: str, description: str) -> None:
        self.kind = kind  # "local", "remote", "socks"
        self.description = description
        self.host = ""
        self.port = 0
        self.path = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._handle: StreamHandle | None = None  # a remote forward's listen stream

    @property
    def listening(self) -> str:
        return where(self.host, self.port, self.path)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop listening (connections already carried go on until they end)."""
        if self._server is not None:
            self._server.close()
        if self._handle is not None:
            self._handle.abandon()
        self._closed.set()
        if self.path and self.kind != "remote":
            with contextlib.suppress(OSError):
                import os

                os.unlink(self.path)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Forwarder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        for task in list(self._tasks):
            task.cancel()


async def _listen_locally(forwarder: Forwarder, handler: Callable[..., Any], host: str,
                          port: int, path: str) -> None:
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)  # never replaces what is there
        except OSError:
            sock.close()
            raise
        forwarder._server = await asyncio.start_unix_server(handler, sock=sock, backlog=BACKLOG,
                                                            limit=LIMIT)
        forwarder.path = path
        return
    forwarder._server = await asyncio.start_server(handler, host, port, reuse_address=True,
                                                   limit=LIMIT, backlog=BACKLOG)
    bound = forwarder._server.sockets[0].getsockname()
    forwarder.host, forwarder.port = str(bound[0]), int(bound[1])


async def forward_local(conn: Connection, listen_host: str, listen_port: int, dest_host: str,
                        dest_port: int, *, listen_path: str = "", dest_path: str = "",
                        report: Report | None = None) -> Forwarder:
    """``-L``: listen here; each connection goes to the destination as the server sees it."""
    say = report or log.warning
    target = where(dest_host, dest_port, dest_path)
    forwarder = Forwarder("local", "")
    fields: dict[str, Any] = ({"path": dest_path} if dest_path
                              else {"host": dest_host, "port": dest_port})

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        forwarder.spawn(carry(conn, reader, writer, say,
                              f"{forwarder.listening} -> {target}", **fields))

    await _listen_locally(forwarder, accepted, listen_host, listen_port, listen_path)
    forwarder.description = f"{forwarder.listening} -> {target} (from the server)"
    return forwarder


async def forward_remote(conn: Connection, listen_host: str, listen_port: int, dest_host: str,
                         dest_port: int, *, listen_path: str = "", dest_path: str = "",
                         report: Report | None = None) -> Forwarder:
    """``-R``: listen on the server; each connection there comes back to the destination as
    this machine sees it. ``listen_port`` 0: the server chooses (see ``.port``)."""
    from tether.client.process import StreamHandle

    say = report or log.warning
    target = where(dest_host, dest_port, dest_path)
    handle = conn.open_stream(Listen, host=listen_host, port=listen_port, path=listen_path)
    assert isinstance(handle, StreamHandle)
    await conn._framed.drain()
    try:
        bound = await handle.next()
    except BaseException:
        handle.abandon()
        raise
    assert isinstance(bound, Listening)
    forwarder = Forwarder("remote", "")
    forwarder._handle = handle
    forwarder.host, forwarder.port, forwarder.path = bound.host, bound.port, bound.path
    forwarder.description = f"server {forwarder.listening} -> {target} (from here)"
    forwarder.spawn(_incoming(conn, forwarder, handle, dest_host, dest_port, dest_path, say))
    return forwarder


async def _incoming(conn: Connection, forwarder: Forwarder, handle: StreamHandle,
                    dest_host: str, dest_port: int, dest_path: str, say: Report) -> None:
    target = where(dest_host, dest_port, dest_path)
    try:
        while True:
            event = await handle.next()
            if isinstance(event, Incoming):
                forwarder.spawn(_take(conn, handle.stream, event, dest_host, dest_port,
                                      dest_path, say, f"{forwarder.listening} -> {target}"))
            elif isinstance(event, Done):
                break
    except TetherError as exc:
        say(f"listener {forwarder.listening}: {exc}")
    finally:
        forwarder._closed.set()


async def _take(conn: Connection, listener: int, incoming: Incoming, dest_host: str,
                dest_port: int, dest_path: str, say: Report, what: str) -> None:
    try:
        if dest_path:
            reader, writer = await asyncio.open_unix_connection(dest_path, limit=LIMIT)
        else:
            reader, writer = await asyncio.open_connection(dest_host, dest_port, limit=LIMIT)
    except OSError as exc:
        say(f"{what}: cannot connect to {where(dest_host, dest_port, dest_path)} for "
            f"{incoming.origin}: {exc.strerror or exc}")
        with contextlib.suppress(TetherError):  # refuse it: the server closes it at once
            conn.open_stream(Connect, listener=listener, incoming=incoming.id).abandon()
        return
    await carry(conn, reader, writer, say, what, listener=listener, incoming=incoming.id)


async def forward_socks(conn: Connection, listen_host: str, listen_port: int, *,
                        listen_path: str = "", report: Report | None = None) -> Forwarder:
    """``-D``: a SOCKS5 proxy here whose connections leave from the server (names resolved
    there: ``curl --socks5-hostname``)."""
    from tether.client.socks import socks_handshake

    say = report or log.warning
    forwarder = Forwarder("socks", "")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port, answer = await socks_handshake(reader, writer)
        except (ValueError, OSError, asyncio.IncompleteReadError) as exc:
            say(f"SOCKS {forwarder.listening}: {exc}")
            writer.transport.abort()
            return
        what = f"SOCKS {forwarder.listening} -> {where(host, port)}"
        try:
            handle, _ = await open_stream(conn, host=host, port=port,
                                          origin=_origin(writer))
        except TetherError as exc:
            say(f"{what}: {exc}")
            await answer(exc)
            writer.transport.abort()
            return
        await answer(None)
        try:
            await pipe(handle, reader, writer)
        except (TetherError, OSError) as exc:
            _unless_ours(say, f"{what}: {exc}", exc)

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        forwarder.spawn(serve(reader, writer))

    await _listen_locally(forwarder, accepted, listen_host, listen_port, listen_path)
    forwarder.description = f"{forwarder.listening} SOCKS5 (connections leave from the server)"
    return forwarder


async def open_connection(conn: Connection, host: str = "", port: int = 0, *, path: str = ""
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream pair to ``host:port`` (or the Unix socket ``path``) as the server sees it,
    like :func:`asyncio.open_connection`; the destination's refusal is raised here."""
    fields: dict[str, Any] = {"path": path} if path else {"host": host, "port": port}
    handle, _ = await open_stream(conn, origin="api", **fields)
    mine, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=mine, limit=LIMIT)
    except BaseException:
        mine.close()
        theirs.close()
        handle.abandon()
        raise
    inner_reader, inner_writer = await asyncio.open_connection(sock=theirs, limit=LIMIT)
    task = asyncio.create_task(_quiet(pipe(handle, reader, writer)))
    _PIPES.add(task)
    task.add_done_callback(_PIPES.discard)
    return inner_reader, inner_writer


_PIPES: set[asyncio.Task[None]] = set()


async def _quiet(coro: Any) -> None:
    with contextlib.suppress(TetherError, OSError):
        await coro
