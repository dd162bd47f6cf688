"""One client connection on the server: handshake, authorization, and dispatch of its frames.

Dispatch is an explicit table from message class to handler (:data:`Session.HANDLERS`); a
peer-supplied name never reaches getattr. A protocol violation ends this connection with an error
frame; nothing here can stop the listener or disturb other sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tether import __version__
from tether.errors import (
    BadRequest,
    ConnectionFailed,
    NotAuthorized,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    TetherError,
    VersionMismatch,
)
from tether.identity import PERMISSIONS, AuthorizedClient, fingerprint
from tether.net.framed import FramedConnection
from tether.protocol import (
    PROTOCOL_VERSIONS,
    Close,
    Data,
    Eof,
    Error,
    Exec,
    Hello,
    Message,
    Ping,
    Pong,
    Role,
    Signal,
    Welcome,
)
from tether.server.exec import CommandRun, ExecPolicy

if TYPE_CHECKING:
    from tether.server.listener import Server

log = logging.getLogger("tether.server")

MAX_STREAMS = 64


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, as established by TLS and the authorized list."""

    fingerprint: str
    name: str
    root: Path
    permissions: frozenset[str]


class Session:
    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.conn = FramedConnection(reader, writer, Role.SERVER)
        self.peer: Peer | None = None
        self.runs: dict[int, CommandRun] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        address = self.conn.peer_address
        try:
            self.peer = self._authorize()
            await asyncio.wait_for(self._handshake(), self.server.config.handshake_timeout)
            log.info("connected %s %s (%s)", address, self.peer.name, self.peer.fingerprint)
            await self._dispatch_loop()
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s", address, exc)
            await self.conn.fail(exc)
        except (NotAuthorized, VersionMismatch) as exc:
            log.warning("refused %s: %s", address, exc)
            await self.conn.fail(exc)
        except TimeoutError:
            log.warning("refused %s: no hello within the handshake timeout", address)
            await self.conn.fail(ConnectionFailed("handshake timed out"))
        except ConnectionFailed as exc:
            log.info("disconnected %s: %s", address, exc)
        finally:
            self._abandon_all()
            await self.conn.close()

    async def shutdown(self) -> None:
        """The server is stopping: tell the client, kill its commands."""
        from tether.errors import ServerShuttingDown

        self._abandon_all()
        await self.conn.fail(ServerShuttingDown("server shutting down"))

    def _authorize(self) -> Peer:
        config = self.server.config
        if config.plaintext:
            return Peer("plaintext", "plaintext", config.root, frozenset(PERMISSIONS))
        cert = self.conn.peer_cert
        if not cert:
            raise NotAuthorized("no client certificate")
        fp = fingerprint(cert)
        client: AuthorizedClient | None = self.server.authorized().get(fp)
        if client is None:
            raise NotAuthorized(f"client identity {fp} is not authorized")
        root = Path(client.root) if client.root else config.root
        return Peer(fp, client.name, root, client.permissions)

    async def _handshake(self) -> None:
        assert self.peer is not None
        hello = await self.conn.next_event()
        if not isinstance(hello, Hello):
            raise RemoteProtocolError("the first frame must be hello")
        common = set(hello.versions) & set(PROTOCOL_VERSIONS)
        if not common:
            raise VersionMismatch(
                f"client offered protocol versions {hello.versions[:8]}, "
                f"server speaks {list(PROTOCOL_VERSIONS)}"
            )
        self.conn.send(
            Welcome(
                version=max(common),
                software=f"tether/{__version__}",
                server_name=self.server.config.name,
                platform=platform.system().lower(),
                encoding=self.server.config.encoding,
                client_fingerprint=self.peer.fingerprint,
                client_name=self.peer.name,
                permissions=sorted(self.peer.permissions),
            )
        )
        await self.conn.drain()

    async def _dispatch_loop(self) -> None:
        while True:
            event = await self.conn.next_event()
            handler = self.HANDLERS.get(type(event))
            if handler is None:
                raise RemoteProtocolError(f"a client may not send {type(event).__name__}")
            await handler(self, event)

    # --- handlers ------------------------------------------------------------------------------

    async def _on_exec(self, msg: Exec) -> None:
        assert self.peer is not None
        try:
            if "exec" not in self.peer.permissions:
                raise PermissionDenied("this client may not run commands")
            if len(self.runs) >= MAX_STREAMS:
                raise BadRequest(f"too many commands at once (limit {MAX_STREAMS})")
            run = CommandRun(self.conn, msg.stream, msg, ExecPolicy(self.peer.root,
                                                                     self.server.config.kill_grace))
            await run.start()
        except RemoteError as exc:
            self._end_stream(msg.stream, exc)
            return
        self.runs[msg.stream] = run
        log.info("exec %s stream %d pid %s: %r", self.peer.name, msg.stream,
                 run.proc.pid if run.proc else "?", msg.argv)
        self._spawn(self._run(run))

    async def _run(self, run: CommandRun) -> None:
        try:
            await run.run()
        finally:
            self.runs.pop(run.stream, None)

    def _end_stream(self, stream: int, exc: TetherError) -> None:
        with contextlib.suppress(TetherError):
            self.conn.send(Error(code=exc.code, message=str(exc), stream=stream))

    async def _on_data(self, data: Data) -> None:
        run = self.runs.get(data.stream)
        if run is None:
            self.conn.consumed(data.stream, len(data.data))
            return
        run.feed_stdin(data.data)

    async def _on_eof(self, msg: Eof) -> None:
        run = self.runs.get(msg.stream)
        if run is not None:
            run.close_stdin()

    async def _on_signal(self, msg: Signal) -> None:
        run = self.runs.get(msg.stream)
        if run is not None:
            try:
                run.signal(msg.name)
            except BadRequest as exc:
                log.warning("ignored signal from %s: %s", self.conn.peer_address, exc)

    async def _on_close(self, msg: Close) -> None:
        run = self.runs.get(msg.stream)
        if run is not None:
            run.abandon()

    async def _on_error(self, msg: Error) -> None:
        if msg.stream == 0:
            raise ConnectionFailed(f"client error: {msg.message}")
        await self._on_close(Close(stream=msg.stream))

    async def _on_ping(self, msg: Ping) -> None:
        self.conn.send(Pong(token=msg.token))

    HANDLERS: ClassVar[dict[type[Any], Callable[[Session, Any], Awaitable[None]]]] = {
        Exec: _on_exec,
        Data: _on_data,
        Eof: _on_eof,
        Signal: _on_signal,
        Close: _on_close,
        Error: _on_error,
        Ping: _on_ping,
    }

    # --- lifetime ------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _abandon_all(self) -> None:
        for run in list(self.runs.values()):
            run.abandon()


__all__ = ["Message", "Peer", "Session"]
