"""The asyncio adapter over real loopback sockets: bytes received straight into the protocol
core, reading paused while the application does not keep up (memory stays bounded), and the
data handed over intact once it reads again."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.net.framed import HIGH_WATER, FramedConnection, FramedProtocol
from tether.protocol import INITIAL_WINDOW, MAX_BODY, Data, Hello, Put, Role, Welcome


async def connected_pair() -> tuple[FramedConnection, FramedConnection, asyncio.Server]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[FramedProtocol] = loop.create_future()

    def make() -> FramedProtocol:
        link = FramedProtocol(Role.SERVER)
        accepted.set_result(link)
        return link

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client_link = await loop.create_connection(lambda: FramedProtocol(Role.CLIENT),
                                                  "127.0.0.1", port)
    return FramedConnection(await accepted), FramedConnection(client_link), server


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FramedConnection, FramedConnection]]:
    server_conn, client_conn, server = await connected_pair()
    try:
        client_conn.send(Hello(versions=[1]))
        assert isinstance(await server_conn.next_event(), Hello)
        server_conn.send(Welcome(version=1))
        assert isinstance(await client_conn.next_event(), Welcome)
        yield server_conn, client_conn
    finally:
        await client_conn.close()
        await server_conn.close()
        server.close()


async def test_reading_pauses_while_the_reader_lags(
        pair: tuple[FramedConnection, FramedConnection]) -> None:
    server_conn, client_conn = pair
    sent = os.urandom(INITIAL_WINDOW)  # a whole window: more than HIGH_WATER
    client_conn.send(Put(path="x", size=len(sent), stream=1))
    await client_conn.send_data(1, 0, sent)
    link = server_conn.link
    for _ in range(500):  # the server does not read: its side must stop receiving
        if link.proto.queued >= HIGH_WATER:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not server_conn.transport.is_reading()
    assert link.proto.queued + link.proto.buffered <= HIGH_WATER + MAX_BODY + 64 * 1024
    assert isinstance(await server_conn.next_event(), Put)
    received = bytearray()
    while len(received) < len(sent):
        event = await server_conn.next_event()
        assert isinstance(event, Data)
        received += event.data
    assert received == sent
    assert server_conn.transport.is_reading()  # and reading resumed


async def test_a_reset_peer_is_a_broken_connection(
        pair: tuple[FramedConnection, FramedConnection]) -> None:
    from tether.errors import ConnectionBroken

    server_conn, client_conn = pair
    client_conn.transport.abort()
    with pytest.raises(ConnectionBroken):
        await server_conn.next_event()


async def tls_pair(tmp: Path) -> tuple[FramedConnection, FramedConnection, asyncio.Server]:
    """As :func:`connected_pair`, over TLS 1.3 with real identities."""
    from tether.identity import generate_identity
    from tether.tls import client_context, server_context

    srv, cli = generate_identity(tmp / "s", "srv", "server"), generate_identity(tmp / "c", "cli")
    sctx = server_context(srv, [ssl.PEM_cert_to_DER_cert(cli.cert_path.read_text())])
    cctx = client_context(cli)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE  # pinning is not under test
    loop = asyncio.get_running_loop()
    links: list[FramedProtocol] = []
    server = await loop.create_server(lambda: links.append(FramedProtocol(Role.SERVER))
                                      or links[-1], "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    _, client_link = await loop.create_connection(lambda: FramedProtocol(Role.CLIENT),
                                                  "127.0.0.1", port, ssl=cctx,
                                                  server_hostname="srv")
    while not links or links[0].transport is None:
        await asyncio.sleep(0.01)
    return FramedConnection(links[0]), FramedConnection(client_link), server


async def test_a_transport_that_fails_mid_send_stops_the_sender(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The TLS transport fails underneath while a sender holds plenty of credit (a killed
    peer's reset, met by our own write): the sender hears it at its next chunk, and nothing is
    written into the dead transport (asyncio would drop it and log one warning per write:
    stray lines on a CLI's stderr, where an error is one line)."""
    from tether.errors import ConnectionBroken

    server_conn, client_conn, server = await tls_pair(tmp_path)
    try:
        client_conn.send(Hello(versions=[1]))
        assert isinstance(await server_conn.next_event(), Hello)
        server_conn.send(Welcome(version=1))
        assert isinstance(await client_conn.next_event(), Welcome)
        client_conn.send(Put(path="x", size=1 << 30, stream=1))
        client_conn.proto._streams[1].send_credit = 1 << 30  # a window tuned for a fast path
        client_conn.link.transport.abort()  # what a write meeting a reset does underneath
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            with pytest.raises(ConnectionBroken):
                for _ in range(16):
                    await client_conn.send_data(1, 0, bytes(MAX_BODY))
            for stream in range(3, 30, 2):  # messages are dropped, not written
                client_conn.send(Put(path="y", size=1, stream=stream))
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    finally:
        await client_conn.close()
        await server_conn.close()
        server.close()
