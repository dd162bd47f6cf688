"""One deadline for connecting (issue 13, client item 15): TCP connect, the TLS handshake and the
server's welcome together, ``--connect-timeout`` (default 10 s), however slowly a hostile server
drips its bytes, on both front doors of ``tether run`` and in the API; the message names the
host and the phase.

The servers are real sockets on loopback: a listening socket whose backlog is full (a connect
that never completes), a TCP server that never starts TLS, and a real TLS 1.3 server (the
client's certificate authorized) that answers the hello with a welcome one byte at a time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

import tether
from tether.errors import ConnectTimeout
from tether.protocol import NEED_DATA, Connection, Hello, Role, Welcome
from tether.tls import server_context

from .helpers import HOST, Identities, arun_cli

DRIP_EVERY = 0.3  # seconds between two bytes of the welcome: ~40 s for all of it
DEADLINE = 1.5  # the --connect-timeout the tests give


class Drip:
    """A TLS server that reads the hello, then sends its welcome one byte every DRIP_EVERY."""

    def __init__(self, ids: Identities) -> None:
        self.ids = ids
        self.server: asyncio.Server | None = None
        self.port = 0
        self.sent = 0  # welcome bytes sent, over every connection
        self.size = 0  # the welcome's size in bytes

    async def start(self) -> None:
        ctx = server_context(self.ids.server, [self.ids.client.cert_der])
        self.server = await asyncio.start_server(self._serve, HOST, 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = Connection(Role.SERVER)
        try:
            while (event := proto.next_event()) is NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                proto.receive_data(data)
            assert isinstance(event, Hello)
            welcome = proto.send(Welcome(version=1, software="drip/0", server_name="drip",
                                         platform="linux", permissions=["exec"]))
            self.size = len(welcome)
            for i in range(len(welcome)):
                writer.write(welcome[i:i + 1])
                await writer.drain()
                self.sent += 1
                await asyncio.sleep(DRIP_EVERY)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def drip(ids: Identities) -> AsyncIterator[Drip]:
    server = Drip(ids)
    await server.start()
    yield server
    assert server.server is not None
    server.server.close()


@pytest.fixture
async def no_tls() -> AsyncIterator[int]:
    """A TCP server that accepts and then says nothing: the TLS handshake never ends."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, HOST, 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full: a further connect is never answered."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection((HOST, port))
    yield port
    filler.close()
    listener.close()


FRONT_DOORS = {"fast": [], "click": ["--keepalive", "30"]}  # --keepalive is click's alone


async def _run(port: int, home: Identities, door: str) -> tuple[float, str, int]:
    started = time.monotonic()
    done = await arun_cli("run", "-p", str(port), "--accept-new", "--connect-timeout",
                          str(DEADLINE), *FRONT_DOORS[door], HOST, "--", "true",
                          home=home.client_home, timeout=60)
    return time.monotonic() - started, done.stderr, done.returncode


@pytest.mark.parametrize("door", list(FRONT_DOORS))
async def test_a_dripped_welcome_meets_one_deadline(drip: Drip, ids: Identities,
                                                    door: str) -> None:
    elapsed, stderr, status = await _run(drip.port, ids, door)
    assert status == 255, stderr
    assert stderr.splitlines() == [
        f"tether: {HOST} port {drip.port}: no connection within {DEADLINE:g} s (stuck in the "
        f"server's welcome; --connect-timeout to wait longer)"]
    assert 0 < drip.sent < drip.size  # bytes were coming, each well within a read's timeout
    assert elapsed < DEADLINE + 8  # not the ~40 s the whole drip takes


@pytest.mark.parametrize("door", list(FRONT_DOORS))
async def test_a_server_that_never_starts_tls(no_tls: int, ids: Identities, door: str) -> None:
    elapsed, stderr, status = await _run(no_tls, ids, door)
    assert status == 255, stderr
    assert stderr.splitlines() == [
        f"tether: {HOST} port {no_tls}: no connection within {DEADLINE:g} s (stuck in the TLS "
        f"handshake; --connect-timeout to wait longer)"]
    assert elapsed < DEADLINE + 8


@pytest.mark.parametrize("door", list(FRONT_DOORS))
async def test_a_connect_that_is_never_answered(full_backlog: int, ids: Identities,
                                                door: str) -> None:
    elapsed, stderr, status = await _run(full_backlog, ids, door)
    assert status == 255, stderr
    assert stderr.splitlines() == [
        f"tether: {HOST} port {full_backlog}: no connection within {DEADLINE:g} s (stuck in "
        f"connecting; --connect-timeout to wait longer)"]
    assert elapsed < DEADLINE + 8


async def test_the_api_raises_connect_timeout(drip: Drip, ids: Identities) -> None:
    with pytest.raises(ConnectTimeout, match="stuck in the server's welcome") as caught:
        async with tether.connect(HOST, drip.port, home=ids.client_home, accept_new=True,
                                  timeout=DEADLINE):
            pass
    assert not isinstance(caught.value, TimeoutError)  # a connection failure, not a timeout
    assert f"{HOST} port {drip.port}" in str(caught.value)


async def test_put_get_and_shell_take_the_option(no_tls: int, ids: Identities,
                                                 ) -> None:
    for args in (["put", "/etc/hostname", f"{HOST}:x"], ["get", f"{HOST}:x", "/nonexistent/"],
                 ["shell", HOST]):
        where = ["-p", str(no_tls), "--connect-timeout", str(DEADLINE)]
        done = await arun_cli(args[0], *where, "--accept-new", *args[1:],
                              home=ids.client_home, timeout=60)
        assert done.returncode == 255, done.stderr
        assert "stuck in the TLS handshake" in done.stderr, done.stderr


async def test_the_default_is_ten_seconds_and_said(ids: Identities) -> None:
    done = await arun_cli("run", "--help", home=ids.client_home)
    assert "--connect-timeout SECONDS" in done.stdout
    assert "[default: 10.0;" in " ".join(done.stdout.split()), done.stdout


async def test_each_host_of_a_fan_out_has_the_deadline(no_tls: int, ids: Identities) -> None:
    done = await arun_cli("run", "-p", str(no_tls), "--accept-new", "--connect-timeout",
                          str(DEADLINE), "--json", f"{HOST},localhost", "--", "true",
                          home=ids.client_home, timeout=60)
    assert done.returncode == 255, done.stderr
    hosts = json.loads(done.stdout)["hosts"]
    assert [h["kind"] for h in hosts] == ["unreachable", "unreachable"]
    assert all("stuck in the TLS handshake" in h["error"] for h in hosts), hosts
