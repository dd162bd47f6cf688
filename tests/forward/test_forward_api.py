"""Forwarding through the API against a real ``tether serve``: open_connection, -L, -R, -D
(with real curl), Unix sockets, 500 connections at once, half-close, a refused destination,
listeners that end with their connection, and the audit records."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from support import wait_until
from tether.errors import RemoteError

from .conftest import Http, Served, curl, echo

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="needs curl")


async def test_open_connection_is_byte_identical_and_half_closes(served: Served,
                                                                 echo_port: int) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    async with served.client.connect() as conn:
        reader, writer = await conn.open_connection("127.0.0.1", echo_port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # half-close: our end of input, and the echo's answer still arrives
        echoed = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    record = served.forward_records(1)[-1]
    assert record["to"] == f"127.0.0.1:{echo_port}"
    assert record["bytes_in"] == record["bytes_out"] == len(payload)
    assert record["outcome"] == "ok" and record["duration"] >= 0


async def test_a_refused_destination_is_an_error_and_the_connection_goes_on(
        served: Served) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with served.client.connect() as conn:
        with pytest.raises(RemoteError, match=f"cannot connect to 127.0.0.1:{closed_port}: "
                                              f"connection refused"):
            await conn.open_connection("127.0.0.1", closed_port)
        assert (await conn.run("echo alive")).stdout == b"alive\n"


async def test_local_forward_closes_the_local_socket_at_once_on_refusal(served: Served) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    lines: list[str] = []
    async with served.client.connect() as conn, await conn.forward_local(
            0, "127.0.0.1", closed_port, report=lines.append) as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        assert time.monotonic() - started < 5
        writer.close()
    assert len(lines) == 1 and "connection refused" in lines[0], lines


async def test_curl_through_a_local_forward(served: Served, http: Http) -> None:
    async with served.client.connect() as conn, await conn.forward_local(
            0, "127.0.0.1", http.port) as fwd:
        done = await asyncio.to_thread(curl, f"http://127.0.0.1:{fwd.port}/big.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (http.root / "big.bin").read_bytes()


async def test_curl_socks5_hostname_resolves_on_the_server(served: Served, http: Http) -> None:
    async with served.client.connect() as conn, await conn.forward_socks(0) as socks:
        done = await asyncio.to_thread(
            curl, "--socks5-hostname", f"127.0.0.1:{socks.port}",
            f"http://localhost:{http.port}/index.html")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"<h1>tether forward</h1>\n"
    assert wait_until(lambda: any(r["to"] == f"localhost:{http.port}"
                                  for r in served.records("forward")), 20)


async def test_remote_forward_port_chosen_by_the_server_is_used_there(served: Served,
                                                                      http: Http) -> None:
    async with served.client.connect() as conn, await conn.forward_remote(
            0, "127.0.0.1", http.port) as fwd:
        assert fwd.port > 0 and fwd.host == "127.0.0.1"
        result = await conn.run(f"curl -sS --max-time 20 http://127.0.0.1:{fwd.port}/big.bin "
                                f"| sha256sum")
        expected = hashlib.sha256((http.root / "big.bin").read_bytes()).hexdigest()
        assert result.stdout.decode().split()[0] == expected, result.stderr
        port = fwd.port
    # the listener ended with the connection: nothing listens on that port any more
    await asyncio.sleep(0.5)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


async def test_unix_sockets_both_ends(served: Served, tmp_path: Path) -> None:
    remote = tmp_path / "echo.sock"
    server = await asyncio.start_unix_server(echo, str(remote))
    local = tmp_path / "local.sock"
    async with server, served.client.connect() as conn, await conn.forward_local(
            0, listen_path=str(local), dest_path=str(remote)) as fwd:
        assert fwd.path == str(local)
        reader, writer = await asyncio.open_unix_connection(str(local))
        writer.write(b"over unix sockets\n")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"over unix sockets\n"
        writer.close()
    assert not local.exists()  # the forward removed its socket


async def test_remote_unix_listener(served: Served, echo_port: int, tmp_path: Path) -> None:
    path = tmp_path / "remote.sock"
    async with served.client.connect() as conn:
        async with await conn.forward_remote(0, "127.0.0.1", echo_port,
                                             listen_path=str(path)) as fwd:
            assert fwd.path == str(path)
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"ping")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"ping"
            writer.close()
        await asyncio.sleep(0.5)
        assert not path.exists()


async def test_500_concurrent_connections_are_byte_identical(served: Served,
                                                             echo_port: int) -> None:
    async def one(port: int, index: int) -> bool:
        payload = os.urandom(2048 + index * 37)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        return got == payload

    async with served.client.connect() as conn, await conn.forward_local(
            0, "127.0.0.1", echo_port) as fwd:
        results = await asyncio.wait_for(
            asyncio.gather(*(one(fwd.port, i) for i in range(500))), 120)
        assert all(results) and len(results) == 500
        assert (await conn.run("echo still")).stdout == b"still\n"


async def test_a_slow_reader_does_not_stall_other_connections(served: Served,
                                                              echo_port: int) -> None:
    async with served.client.connect() as conn:
        _slow_reader, slow_writer = await conn.open_connection("127.0.0.1", echo_port)
        slow_writer.write(os.urandom(16 * 1024 * 1024))  # never read: its windows fill
        reader, writer = await conn.open_connection("127.0.0.1", echo_port)
        writer.write(b"quick")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"quick"
        writer.close()
        slow_writer.transport.abort()


async def test_data_before_connected_is_bounded(served: Served) -> None:
    """A destination that never answers (its accept queue is full) must not let a client pin
    a whole window per stream: past 256 KiB before `connected`, the stream ends busy."""
    from tether.errors import Busy
    from tether.protocol import Connect

    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.2)
        try:
            async with served.client.connect() as conn:
                handle = conn.open_stream(Connect, host="127.0.0.1", port=port)
                with contextlib.suppress(Busy):
                    await handle.send_data(b"x" * (512 * 1024))
                with pytest.raises(Busy, match=r"256 KiB sent before 127\.0\.0\.1"):
                    await asyncio.wait_for(handle.next(), 20)
                assert (await conn.run("echo fine")).stdout == b"fine\n"
        finally:
            for s in fillers:
                s.close()


async def test_a_remote_forward_through_the_mux(served: Served, http: Http,
                                                tmp_path: Path) -> None:
    """Through ``tether mux`` (stream ids renumbered) an incoming connection is still taken
    from the right listener."""
    import shutil

    import tether
    from tether.client import mux

    home = tmp_path / "muxed"
    shutil.copytree(served.client.home, home)
    try:
        async with tether.connect("127.0.0.1", served.server.port, home=home,
                                  mux="auto") as first, tether.connect(
                "127.0.0.1", served.server.port, home=home, mux="auto") as conn:
            assert first.shared and conn.shared
            for _ in range(3):  # the first link's streams: the ids of conn's differ upstream
                assert (await first.run("true")).ok
            async with await conn.forward_remote(0, "127.0.0.1", http.port) as fwd:
                result = await conn.run(f"curl -sS --max-time 20 "
                                        f"http://127.0.0.1:{fwd.port}/index.html")
                assert result.stdout == b"<h1>tether forward</h1>\n", result.stderr
    finally:
        with contextlib.suppress(mux.MuxUnavailable):
            mux.request(home, {"op": "stop"})
