"""Two promises of docs/SECURITY.md that had no test: every connection authenticates in full
(no TLS session resumption), and --plaintext is refused on a non-loopback address."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tether.errors import TetherError
from tether.server.listener import Server, ServerConfig
from tether.tls import client_context

from .conftest import Setup
from .rawclient import RawClient


async def test_no_tls_session_resumption(setup: Setup) -> None:
    def twice() -> tuple[object, bool]:
        ctx = client_context(setup.client_id)
        first = RawClient(ctx.wrap_socket(socket.create_connection(("127.0.0.1", setup.port))))
        first.handshake()  # reads the welcome, so any session ticket would have arrived by now
        session = first.sock.session  # type: ignore[union-attr]
        first.close()
        raw = socket.create_connection(("127.0.0.1", setup.port))
        with ctx.wrap_socket(raw, session=session) as second:
            second.sendall(b"")
            return session, second.session_reused

    session, reused = await asyncio.to_thread(twice)
    assert not reused
    assert session is None or not session.has_ticket  # type: ignore[attr-defined]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_plaintext_is_refused_off_loopback(tmp_path: Path, host: str) -> None:
    with pytest.raises(TetherError, match="only allowed on a loopback address"):
        Server(ServerConfig(home=tmp_path, host=host, plaintext=True), None)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_plaintext_is_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    Server(ServerConfig(home=tmp_path, host=host, plaintext=True), None)
