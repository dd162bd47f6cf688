"""The server's forwarding policy: the ``forward`` permission, ``--permit-open``,
``--permit-listen``, loopback-only listeners unless ``--gateway-ports``, and confined clients
(``--root``) forwarding only where a permit allows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from conftest import keygen, pin, tether_cli
from tether.errors import PermissionDenied

from .conftest import Http, Served, serve_with

GET = b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def permits(tmp_path_factory: pytest.TempPathFactory, client_home: Path, http: Http
            ) -> Iterator[Served]:
    """A server permitting connections to the HTTP server only, and listeners on ports
    chosen by the server."""
    yield from serve_with(tmp_path_factory.mktemp("permits"), client_home,
                          "--permit-open", f"127.0.0.1:{http.port}",
                          "--permit-listen", "0")


def other_client(tmp: Path, served: Served, *authorize: str) -> Path:
    """Another identity, authorized on ``served`` with ``authorize`` options, and pinned."""
    home = tmp / "other"
    keygen(home, "other-client")
    line = tether_cli("id", home=home).stdout.decode().strip()
    done = tether_cli("authorize", line, *authorize, home=served.server.home)
    assert done.returncode == 0, done.stderr
    pin(home, served.server.port, served.server.fingerprint)
    return home


async def fetch(conn: tether.Connection, port: int) -> bytes:
    reader, writer = await conn.open_connection("127.0.0.1", port)
    writer.write(GET)
    await writer.drain()
    body = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return body


async def test_permit_open_allows_only_what_it_names(permits: Served, http: Http,
                                                     served: Served) -> None:
    async with permits.client.connect() as conn:
        assert b"<h1>tether forward</h1>" in await fetch(conn, http.port)
        with pytest.raises(PermissionDenied, match=r"forwarding to 127\.0\.0\.1:"
                                                   rf"{permits.server.port} is not permitted "
                                                   r"by this server \(serve --permit-open\)"):
            await conn.open_connection("127.0.0.1", permits.server.port)
        assert (await conn.run("echo on")).stdout == b"on\n"
    refusal = permits.records("stream_error")[-1]
    assert refusal["code"] == "permission_denied"
    assert refusal["target"] == f"127.0.0.1:{permits.server.port}"


async def test_permit_listen_and_loopback_only_listeners(permits: Served, http: Http) -> None:
    async with permits.client.connect() as conn:
        async with await conn.forward_remote(0, "127.0.0.1", http.port) as fwd:
            assert fwd.port > 0
        with pytest.raises(PermissionDenied, match=r"listening on 127\.0\.0\.1:9 is not permitted"):
            await conn.forward_remote(9, "127.0.0.1", http.port)
        with pytest.raises(PermissionDenied, match=r"loopback only, not 0\.0\.0\.0 \(serve "
                                                   r"--gateway-ports\)"):
            await conn.forward_remote(0, "127.0.0.1", http.port, listen_host="0.0.0.0")


async def test_gateway_ports_lets_a_listener_bind_every_interface(
        tmp_path: Path, client_home: Path, http: Http) -> None:
    for gateway in serve_with(tmp_path, client_home, "--gateway-ports"):
        async with gateway.client.connect() as conn, await conn.forward_remote(
                0, "127.0.0.1", http.port, listen_host="0.0.0.0") as fwd:
            assert fwd.host == "0.0.0.0" and fwd.port > 0


async def test_without_the_forward_permission_nothing_is_forwarded(
        tmp_path: Path, served: Served, http: Http) -> None:
    home = other_client(tmp_path, served, "--allow", "exec,get")
    async with tether.connect("127.0.0.1", served.server.port, home=home) as conn:
        assert "forward" not in conn.server.permissions
        with pytest.raises(PermissionDenied, match="this client may not forward connections"):
            await conn.open_connection("127.0.0.1", http.port)
        with pytest.raises(PermissionDenied, match="may not forward"):
            await conn.forward_remote(0, "127.0.0.1", http.port)


async def test_a_confined_client_forwards_only_where_a_permit_allows(
        tmp_path: Path, served: Served, permits: Served, http: Http) -> None:
    root = tmp_path / "jail"
    root.mkdir()
    home = other_client(tmp_path, served, "--root", str(root))
    async with tether.connect("127.0.0.1", served.server.port, home=home) as conn:
        with pytest.raises(PermissionDenied, match="confined to its root and the server "
                                                   "permits it nowhere"):
            await conn.open_connection("127.0.0.1", http.port)
        with pytest.raises(PermissionDenied, match="confined"):
            await conn.forward_remote(0, "127.0.0.1", http.port)
    line = tether_cli("id", home=home).stdout.decode().strip()
    assert tether_cli("authorize", line, "--root", str(root),
                      home=permits.server.home).returncode == 0
    pin(home, permits.server.port, permits.server.fingerprint)
    async with tether.connect("127.0.0.1", permits.server.port, home=home) as conn:
        assert b"<h1>tether forward</h1>" in await fetch(conn, http.port)
        with pytest.raises(PermissionDenied, match="not permitted"):
            await conn.open_connection("127.0.0.1", permits.server.port)
