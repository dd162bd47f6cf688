"""The asyncio adapter over real loopback sockets: bytes received straight into the protocol
core, reading paused while the application does not keep up (memory stays bounded), and the
data handed over intact once it reads again."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

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
