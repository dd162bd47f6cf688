"""Availability under abuse: slow peers hit a deadline at every phase while a real client still
gets in; many idle connections and running out of file descriptors do not stop the server;
limits refuse what exceeds them with a clear reason; the audit log records it all."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tether
from tether.errors import Busy, ConnectionFailed
from tether.identity import AuthorizedClient, add_authorized, generate_identity
from tether.server.limits import Limits

from .conftest import Setup, make_setup
from .rawclient import RawClient, msg_frame, prefix


async def _real_client_works(setup: Setup) -> float:
    """Seconds a real client takes to connect and run a command."""
    start = time.monotonic()
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        assert (await conn.run("echo ok")).stdout == b"ok\n"
    return time.monotonic() - start


@pytest.fixture
async def strict(tmp_path: Path) -> Setup:
    limits = Limits(handshake_timeout=1.0, frame_timeout=1.0, idle_timeout=1.0)
    s = await make_setup(tmp_path, limits, audit=tmp_path / "audit.jsonl")
    yield s  # type: ignore[misc]
    await s.server.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes the connection within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


async def test_slowloris_in_the_tls_handshake(strict: Setup) -> None:
    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", strict.port))
    sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then silence
    assert await _real_client_works(strict) < 5
    assert await asyncio.to_thread(_closed_within, sock, 5)


@pytest.mark.parametrize("phase", ["before hello", "inside a header", "inside a body"])
async def test_slowloris_after_tls(strict: Setup, phase: str) -> None:
    client = await asyncio.to_thread(RawClient.connect, strict.port, strict.client_id)
    if phase != "before hello":
        await asyncio.to_thread(client.handshake)
        partial = msg_frame({"t": "ping", "token": 1})
        if phase == "inside a header":
            partial = partial[:20]
        else:
            partial = prefix(2, 0, 1, 0, 100)[:16] + b"x"
        await asyncio.to_thread(client.send, partial)
    assert await _real_client_works(strict) < 5
    assert await asyncio.to_thread(_closed_within, client.sock, 5)  # type: ignore[arg-type]


async def test_idle_authenticated_connection_is_closed(strict: Setup) -> None:
    conn = await tether.connect("127.0.0.1", strict.port, home=strict.client_home,
                                accept_new=True)
    await asyncio.sleep(2.0)
    with pytest.raises(ConnectionFailed):
        await conn.run("true")
    await conn.close()


def _idle_sockets(port: int, count: int, source: str) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            for _ in range(count)]


async def test_idle_unauthenticated_flood_does_not_starve_a_real_client(setup: Setup) -> None:
    """1,000 silent TCP connections from one address: beyond the per-address handshake limit
    they are refused, and a client from another address is served as usual."""
    socks = await asyncio.to_thread(_idle_sockets, setup.port, 1000, "127.0.0.2")
    try:
        assert await _real_client_works(setup) < 10
    finally:
        for s in socks:
            s.close()


async def test_many_idle_authenticated_connections_do_not_starve_a_real_client(
        setup: Setup) -> None:
    idle = [await tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                                 accept_new=True) for _ in range(200)]
    try:
        assert await _real_client_works(setup) < 10
        assert setup.server.admission.clients[setup.client_id.fingerprint] >= 200
    finally:
        for conn in idle:
            await conn.close()


def test_running_out_of_file_descriptors_pauses_accepting(tmp_path: Path) -> None:
    """A server at its descriptor limit stops accepting for a moment instead of dying."""
    home, client_home = tmp_path / "srv", tmp_path / "cli"
    client = generate_identity(client_home, "c")
    add_authorized(home, AuthorizedClient(client.cert_der, "c"))
    log = tmp_path / "server.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the server
        server = subprocess.Popen(
            ["bash", "-c", f"ulimit -n 64; exec {sys.executable} -m tether serve -p 0 "
                           f"--root {tmp_path}"],
            env={**os.environ, "TETHER_HOME": str(home)}, stderr=sink)
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(log.read_text().split("listening on 127.0.0.1:")[1].split(",")[0])
        hogs = _idle_sockets(port, 100, "127.0.0.2")
        time.sleep(1.0)  # the server hits EMFILE on accept() and backs off
        assert server.poll() is None
        for sock in hogs:
            sock.close()
        time.sleep(1.5)  # the back-off ends
        with tether.SyncConnection("127.0.0.1", port, home=client_home,
                                   accept_new=True) as conn:
            assert conn.run("echo accepted").stdout == b"accepted\n"
    finally:
        server.terminate()
        server.wait(10)


async def test_connections_per_client_limit(tmp_path: Path) -> None:
    s = await make_setup(tmp_path, Limits(max_connections_per_client=2))
    try:
        first = await tether.connect("127.0.0.1", s.port, home=s.client_home, accept_new=True)
        second = await tether.connect("127.0.0.1", s.port, home=s.client_home)
        with pytest.raises(Busy, match="too many connections"):
            await tether.connect("127.0.0.1", s.port, home=s.client_home)
        await first.close()
        await asyncio.sleep(0.2)
        third = await tether.connect("127.0.0.1", s.port, home=s.client_home)
        await second.close()
        await third.close()
    finally:
        await s.server.close()


async def test_processes_per_client_limit(tmp_path: Path) -> None:
    s = await make_setup(tmp_path, Limits(max_processes_per_client=2))
    try:
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as conn:
            sleepers = [await conn.start("sleep 1") for _ in range(2)]
            with pytest.raises(Busy, match="too many processes"):
                await conn.run("true")
            for proc in sleepers:
                await proc.wait()
            assert (await conn.run("echo again")).stdout == b"again\n"
    finally:
        await s.server.close()


async def test_failed_handshakes_from_an_address_are_throttled(tmp_path: Path) -> None:
    s = await make_setup(tmp_path, Limits(max_failures_per_address=3))
    try:
        for _ in range(3):
            garbage = await asyncio.to_thread(RawClient.connect, s.port, None)
            await asyncio.to_thread(garbage.send, b"GET / HTTP/1.0\r\n\r\n")
            await asyncio.to_thread(garbage.read_until_closed, 5)
        with pytest.raises(ConnectionFailed):
            await tether.connect("127.0.0.1", s.port, home=s.client_home, accept_new=True)
    finally:
        await s.server.close()


async def test_upload_limit(tmp_path: Path) -> None:
    s = await make_setup(tmp_path, Limits(max_upload=1000))
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1001)
    try:
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as conn:
            with pytest.raises(tether.errors.BadRequest, match="upload limit"):
                await conn.put(big, "big")
            assert not (s.root / "big").exists()
            assert (await conn.run("echo usable")).stdout == b"usable\n"
    finally:
        await s.server.close()


async def test_memory_hog_is_contained(tmp_path: Path) -> None:
    s = await make_setup(tmp_path, Limits(process_memory=256 * 1024 * 1024))
    try:
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as conn:
            hog = await conn.run(["python3", "-c", "x = bytearray(1 << 30)"])
            assert hog.status != 0 and b"MemoryError" in hog.stderr
            assert (await conn.run("echo alive")).stdout == b"alive\n"
    finally:
        await s.server.close()


async def test_audit_log_records_connections_commands_and_refusals(strict: Setup) -> None:
    async with tether.connect("127.0.0.1", strict.port, home=strict.client_home,
                              accept_new=True) as conn:
        await conn.run(["echo", "audited"])
    garbage = await asyncio.to_thread(RawClient.connect, strict.port, None)
    await asyncio.to_thread(garbage.send, b"GET / HTTP/1.0\r\n\r\n")
    await asyncio.to_thread(garbage.read_until_closed, 5)
    await asyncio.sleep(0.2)
    log = strict.server.config.audit
    assert log is not None
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "connection" in kinds and "refused" in kinds
    command = next(e for e in events if e["event"] == "command")
    assert command["argv"] == ["echo", "audited"] and command["status"] == 0
    assert command["fingerprint"] == strict.client_id.fingerprint
