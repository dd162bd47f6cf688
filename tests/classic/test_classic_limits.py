"""Bounds of the classic listener, in process with short limits: silent peers are dropped,
commands time out with their process group, output and uploads are capped, shutdown kills."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.errors import TetherError
from tether.server.audit import AuditLog
from tether.server.classic import ClassicServer
from tether.server.config import ClassicConfig
from tether.server.limits import Limits

Pipe = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def classic(tmp_path: Path) -> AsyncIterator[ClassicServer]:
    config = ClassicConfig(timeout=1.0, idle_timeout=0.5, read_timeout=0.5, max_file=1000,
                           max_output=1000)
    server = ClassicServer(config, tmp_path, "utf-8", kill_grace=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def connect(server: ClassicServer) -> Pipe:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def ask(pipe: Pipe, command: bytes) -> bytes:
    pipe[1].write(command)
    return await asyncio.wait_for(pipe[0].read(1 << 20), 10)


async def closed_within(pipe: Pipe, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(pipe[0].read(1 << 20), seconds)
    except ConnectionResetError:
        return True
    return data == b"" or pipe[0].at_eof()


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def eventually(predicate: object, seconds: float = 15.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def packed(obj: object) -> bytes:
    raw = json.dumps(obj).encode()
    return struct.pack("i", len(raw)) + raw


async def test_a_silent_peer_is_dropped(classic: ClassicServer) -> None:
    assert await closed_within(await connect(classic), 5)


async def test_a_peer_silent_after_a_length_is_dropped(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(struct.pack("i", 40))
    assert await closed_within(pipe, 5)


async def test_a_peer_silent_inside_a_header_is_dropped(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(struct.pack("i", 40) + b'{"opt": ')
    assert await closed_within(pipe, 5)


async def test_an_upload_that_stops_short_stores_nothing(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(packed({"opt": "upload", "filename": "short.bin", "filesize": 500}) + b"x" * 10)
    assert await closed_within(pipe, 5)
    assert sorted(os.listdir(classic.root)) == []


async def test_an_upload_over_the_cap_is_refused(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(packed({"opt": "upload", "filename": "big.bin", "filesize": 1001}))
    assert await closed_within(pipe, 5)
    assert not (classic.root / "big.bin").exists()


async def test_an_empty_upload_is_stored(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(packed({"opt": "upload", "filename": "empty.txt", "filesize": 0}))
    assert await ask(pipe, b"ls") == b"empty.txt\n"


async def test_a_too_long_header_is_not_a_command(classic: ClassicServer) -> None:
    """Its length prefix holds NUL bytes: the connection is closed, nothing after it runs."""
    pipe = await connect(classic)
    pipe[1].write(struct.pack("i", 100_000) + b'{"opt": "upload", "x": "$(touch pwned)"}')
    reply = await asyncio.wait_for(pipe[0].read(1000), 5)
    assert b"NUL byte" in reply
    assert await closed_within(pipe, 5)
    assert not (classic.root / "pwned").exists()


async def test_a_command_times_out_with_its_group(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    started = time.monotonic()
    reply = await ask(pipe, b"echo $$; sleep 30 & sleep 30")
    assert time.monotonic() - started < 10
    pgid = int(reply.split(b"\n")[0])
    assert b"timed out after 1s; process group killed" in reply
    assert await ask(pipe, b"echo next") == b"next\n"
    assert await eventually(lambda: group_gone(pgid))


async def test_leftovers_are_killed_when_the_command_exits(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    started = time.monotonic()
    reply = await ask(pipe, b"sleep 30 & echo $$")
    assert time.monotonic() - started < 0.9  # not held until the timeout by the background job
    assert await eventually(lambda: group_gone(int(reply)))


async def test_output_is_capped(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(b"head -c 50000 /dev/zero | tr '\\0' a")
    reply = b""
    while b"truncated" not in reply:
        chunk = await asyncio.wait_for(pipe[0].read(1 << 20), 10)
        assert chunk
        reply += chunk
    assert reply == b"a" * 1000 + b"\ntether: output truncated at 1000 bytes\n"


async def test_close_kills_a_running_command(classic: ClassicServer) -> None:
    pipe = await connect(classic)
    pipe[1].write(b"echo $$ > pgid; sleep 30")
    pgid_file = classic.root / "pgid"
    assert await eventually(lambda: pgid_file.exists() and pgid_file.read_text().strip() != "")
    await classic.close()
    assert await eventually(lambda: group_gone(int(pgid_file.read_text())))
    assert await closed_within(pipe, 5)


async def test_one_bad_connection_leaves_the_others_alone(classic: ClassicServer) -> None:
    good = await connect(classic)
    bad = await connect(classic)
    bad[1].write(packed({"opt": "upload", "filename": "..", "filesize": 3}) + b"abc")
    assert await closed_within(bad, 5)
    assert await ask(good, b"echo fine") == b"fine\n"


def test_a_non_loopback_address_needs_allow_remote(tmp_path: Path) -> None:
    with pytest.raises(TetherError):
        ClassicServer(ClassicConfig(host="0.0.0.0"), tmp_path, "utf-8")


async def test_connections_are_capped(tmp_path: Path) -> None:
    server = ClassicServer(ClassicConfig(max_connections=2), tmp_path, "utf-8")
    await server.start()
    try:
        first, second = await connect(server), await connect(server)
        assert await ask(first, b"echo 1") == b"1\n"
        assert await ask(second, b"echo 2") == b"2\n"
        third = await connect(server)
        assert await closed_within(third, 5)
        assert await ask(first, b"echo still") == b"still\n"
    finally:
        await server.close()


async def test_the_tls_upload_cap_applies_when_lower(tmp_path: Path) -> None:
    server = ClassicServer(ClassicConfig(), tmp_path, "utf-8", limits=Limits(max_upload=10))
    await server.start()
    try:
        pipe = await connect(server)
        pipe[1].write(packed({"opt": "upload", "filename": "a.bin", "filesize": 11}))
        assert await closed_within(pipe, 5)
        pipe = await connect(server)
        pipe[1].write(packed({"opt": "upload", "filename": "a.bin", "filesize": 10}) + b"x" * 10)
        assert await ask(pipe, b"cat a.bin") == b"x" * 10
    finally:
        await server.close()


async def test_events_go_to_the_audit_log(tmp_path: Path) -> None:
    root, path = tmp_path / "root", tmp_path / "audit.jsonl"
    root.mkdir()
    audit = AuditLog(path)
    server = ClassicServer(ClassicConfig(), root, "utf-8", audit=audit)
    await server.start()
    try:
        pipe = await connect(server)
        pipe[1].write(packed({"opt": "upload", "filename": "../r.txt", "filesize": 2}) + b"hi")
        assert await ask(pipe, b"exit 4") == b"tether: no output (exit status 4)\n"
        pipe[1].write(packed({"opt": "nope", "filename": "r.txt"}))
        assert await closed_within(pipe, 5)
    finally:
        await server.close()
        audit.close()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["op"]) for e in events] == [
        ("classic", "upload"), ("classic", "command"), ("classic", "closed")]
    upload, command, closed = events
    assert (upload["filename"], upload["stored"], upload["bytes"]) == ("../r.txt", "r.txt", 2)
    assert upload["hash"].startswith("blake3:")
    assert (command["command"], command["status"], command["timed_out"]) == ("exit 4", 4, False)
    assert "neither upload nor download" in closed["reason"]


async def test_commands_get_the_servers_rlimits(tmp_path: Path) -> None:
    limits = Limits(process_memory=512 << 20)
    server = ClassicServer(ClassicConfig(), tmp_path, "utf-8", limits=limits)
    await server.start()
    try:
        assert await ask(await connect(server), b"ulimit -v") == b"524288\n"
    finally:
        await server.close()
