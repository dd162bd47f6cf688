"""The audit log's transfer and command events (test_availability.py covers connections and
refusals): one JSON object per line, with the path, bytes, hash and outcome of each transfer and
the argv, cwd, status and duration of each command; lines stay whole under concurrent writers."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import tether
from tether.storage.source import digest, new_hasher

from .conftest import make_setup


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_transfers_and_commands_are_audited(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    s = await make_setup(tmp_path, audit=log)
    data = os.urandom(3 * 1024 * 1024 + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    (s.root / "sub").mkdir()
    try:
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as conn:
            await conn.put(src, "up.bin")
            await conn.get("up.bin", tmp_path / "down.bin")
            await conn.run(["sh", "-c", "exit 7"], cwd="sub")
            await asyncio.gather(*(conn.run(["true"]) for _ in range(20)))
    finally:
        await s.server.close()
    assert os.stat(log).st_mode & 0o777 == 0o600
    events = _events(log)
    hasher = new_hasher()
    hasher.update(data)
    put, got = (next(e for e in events if e["event"] == "transfer" and e["op"] == op)
                for op in ("put", "get"))
    for event in (put, got):
        assert event["path"] == "up.bin" and event["bytes"] == len(data)
        assert event["hash"] == digest(hasher) and event["outcome"] == "ok"
        assert event["fingerprint"] == s.client_id.fingerprint
    command = next(e for e in events if e["event"] == "command" and e["cwd"] == "sub")
    assert command["argv"] == ["sh", "-c", "exit 7"] and command["status"] == 7
    assert command["duration"] >= 0 and command["timed_out"] is False
    assert sum(e["event"] == "command" for e in events) == 21
    kinds = {e["event"] for e in events}
    assert {"connection", "disconnection", "transfer", "command"} <= kinds


async def test_unicode_line_breaks_from_a_peer_are_escaped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    s = await make_setup(tmp_path, audit=log)
    odd = "a\u2028b\x85c\u2029d\x1b[2J"
    try:
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as conn:
            await conn.run(["true", odd])
    finally:
        await s.server.close()
    raw = log.read_bytes()
    assert raw.isascii() and raw.count(b"\n") == len(raw.splitlines())
    command = next(e for e in _events(log) if e["event"] == "command")
    assert command["argv"] == ["true", odd]
