"""Issue 13 item 11: what refusals cost in log and audit, and what they record.

Before: unauthenticated connections from one address wrote a log and an audit line each (5.4 MB
in 10 s); a refused request's audit record had neither its argv nor its path; ``list`` was not
audited. Now one address's refusals within ``--refusal-log-interval`` make one line at once and
one summary line with a count; refused requests carry op and argv/path; listings are audited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.errors import PermissionDenied
from tether.identity import AuthorizedClient, add_authorized, generate_identity
from tether.server.limits import Limits

from .conftest import make_setup
from .rawclient import RawClient

ATTEMPTS = 60


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _strangers(port: int, stranger: Any, count: int) -> None:
    for _ in range(count):
        try:
            client = RawClient.connect(port, stranger, timeout=5)
            client.handshake()
        except (OSError, AssertionError, IndexError):
            pass
        else:
            client.close()


async def test_refusals_of_one_address_are_summed_up(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "audit.jsonl"
    s = await make_setup(tmp_path, audit=log,
                         limits=Limits(refusal_log_interval=1.0, max_failures_per_address=10**6))
    stranger = generate_identity(tmp_path / "stranger", "stranger")
    caplog.set_level(logging.WARNING, logger="tether.server")
    try:
        await asyncio.to_thread(_strangers, s.port, stranger, ATTEMPTS)
        started = time.monotonic()
        while time.monotonic() - started < 5:
            if any(e.get("count") for e in _events(log) if e["event"] == "refused"):
                break
            await asyncio.sleep(0.1)
    finally:
        await s.server.close()
    refused = [e for e in _events(log) if e["event"] == "refused"]
    assert refused, "no refusal audited"
    assert len(refused) <= 2 + 2 * (time.monotonic() - started + 2), refused[:5]
    assert len(refused) < ATTEMPTS // 4
    assert sum(e.get("count", 1) for e in refused) == ATTEMPTS
    assert all("not authorized" in e["reason"] for e in refused)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == len(refused)


async def test_a_refused_request_is_audited_with_what_it_asked(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    s = await make_setup(tmp_path, audit=log)
    getter = generate_identity(tmp_path / "getter", "getter")
    add_authorized(s.server.config.home,
                   AuthorizedClient(getter.cert_der, "getter", permissions=frozenset({"get"})))
    (s.root / "d").mkdir()
    (s.root / "d" / "f").write_text("x")
    try:
        async with tether.connect("127.0.0.1", s.port, home=tmp_path / "getter",
                                  accept_new=True) as conn:
            with pytest.raises(PermissionDenied):
                await conn.run(["rm", "-rf", "/precious"])
            with pytest.raises(PermissionDenied):
                await conn.put(tmp_path / "audit.jsonl", "planted.txt")
            await conn.get("d", tmp_path / "out", recursive=True)
    finally:
        await s.server.close()
    events = _events(log)
    errors = [e for e in events if e["event"] == "stream_error"]
    assert any(e.get("argv") == ["rm", "-rf", "/precious"] and e["op"] == "exec"
               for e in errors), errors
    assert any(e.get("op") == "put" and e.get("path") == "planted.txt" for e in errors), errors
    listed = [e for e in events if e["event"] == "list"]
    assert listed and listed[0]["path"] == "d" and listed[0]["count"] == 2, listed
    assert listed[0]["fingerprint"] == getter.fingerprint
