"""The listener: TLS setup, accepting connections, and an orderly shutdown.

The server's TLS context is rebuilt whenever the authorized file changes (through the SNI hook,
which OpenSSL calls for every ClientHello), so ``tether authorize`` takes effect for the next
connection without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import locale
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import TetherError
from tether.identity import AuthorizedClient, Identity, authorized_path, load_authorized
from tether.server.session import Session
from tether.tls import server_context

log = logging.getLogger("tether.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    home: Path
    host: str = "127.0.0.1"
    port: int = 7722
    root: Path = field(default_factory=Path.home)
    name: str = field(default_factory=socket.gethostname)
    encoding: str = field(default_factory=lambda: locale.getpreferredencoding(False))
    plaintext: bool = False
    handshake_timeout: float = 10.0
    kill_grace: float = 1.0


class Server:
    def __init__(self, config: ServerConfig, identity: Identity | None) -> None:
        if config.plaintext and not is_loopback(config.host):
            raise TetherError(
                f"--plaintext is only allowed on a loopback address, not {config.host}"
            )
        if not config.plaintext and identity is None:
            raise TetherError("a TLS server needs an identity")
        self.config = config
        self.identity = identity
        self.sessions: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._stamp: tuple[int, int] | None = None
        self._clients: dict[str, AuthorizedClient] = {}
        self._ctx: ssl.SSLContext | None = None
        self._stopped = asyncio.Event()

    # --- authorization -------------------------------------------------------------------------

    def authorized(self) -> dict[str, AuthorizedClient]:
        """The authorized clients, re-read when the file changed."""
        path = authorized_path(self.config.home)
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            try:
                self._clients = load_authorized(self.config.home)
            except TetherError as exc:
                log.error("keeping the previous authorized list: %s", exc)
            self._stamp = stamp
            self._ctx = None
        return self._clients

    def _tls_context(self) -> ssl.SSLContext:
        clients = self.authorized()
        if self._ctx is None:
            assert self.identity is not None
            self._ctx = server_context(self.identity, (c.cert_der for c in clients.values()))
        return self._ctx

    def _on_client_hello(
        self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        sslobj.context = self._tls_context()

    # --- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        ctx: ssl.SSLContext | None = None
        if not self.config.plaintext:
            assert self.identity is not None
            ctx = server_context(self.identity, ())
            ctx.sni_callback = self._on_client_hello
        self._server = await asyncio.start_server(
            self._on_connection,
            self.config.host,
            self.config.port,
            ssl=ctx,
            ssl_handshake_timeout=self.config.handshake_timeout if ctx else None,
            limit=1024 * 1024,
            backlog=1024,
        )
        sock = self._server.sockets[0]
        self.config.port = sock.getsockname()[1]

    @property
    def port(self) -> int:
        return self.config.port

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.serve()
        except Exception:  # a bug in one session must never take the listener down
            log.exception("session failed")
        finally:
            self.sessions.discard(session)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopped.set)
        await self._stopped.wait()
        await self.close()

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        sessions = list(self.sessions)
        await asyncio.gather(*(s.shutdown() for s in sessions), return_exceptions=True)
        # give the commands' kill tasks their grace period, so no process group outlives us
        pending = [t for s in sessions for t in s.tasks]
        if pending:
            await asyncio.wait(pending, timeout=self.config.kill_grace + 2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
