"""Requests that are well-formed frames but carry what no disk can hold, found by test_fuzz.py:
text with a lone surrogate (JSON's ``"\\ud800"`` decodes to one; UTF-8 cannot carry it) and names
too long for the file system. Each gets an error on its own stream, the connection goes on, and
the server keeps no descriptor for it. Before the fix a put dropped the connection without a
word, and a get or a list never answered at all (the client waited forever).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.identity import AuthorizedClient, add_authorized, generate_identity
from tether.server.audit import AuditLog

from .conftest import Setup, make_setup
from .rawclient import RawClient, msg_frame

SURROGATE = "\ud800"

REQUESTS: dict[str, dict[str, Any]] = {
    "put path": {"t": "put", "path": SURROGATE, "size": 1},
    "put name": {"t": "put", "path": "", "name": SURROGATE, "size": 1},
    "symlink target": {"t": "put", "path": "", "name": "l", "kind": "symlink",
                       "target": SURROGATE},
    "dir name": {"t": "put", "path": "", "name": SURROGATE, "kind": "dir"},
    "get": {"t": "get", "path": SURROGATE},
    "list": {"t": "list", "path": SURROGATE},
    "exec argv": {"t": "exec", "argv": [SURROGATE]},
    "exec cwd": {"t": "exec", "argv": ["true"], "cwd": SURROGATE},
    "exec env": {"t": "exec", "argv": ["true"], "env": {"X": SURROGATE}},
    "shell argv": {"t": "shell", "pty": False, "argv": [SURROGATE]},
    "put name too long": {"t": "put", "path": "", "name": "x" * 300, "size": 1},
    "get name too long": {"t": "get", "path": "x" * 300},
    "put into a name too long": {"t": "put", "path": "x" * 300 + "/", "name": "f", "size": 1},
}


def _ask(setup: Setup, header: dict[str, Any]) -> list[tuple[int, dict[str, Any] | None]]:
    """Send one request on stream 1 and a ping; the frames that come back (up to 3)."""
    client = RawClient.connect(setup.port, setup.client_id, timeout=5)
    try:
        client.handshake()
        client.send(msg_frame(json.dumps(header).encode(), stream=1))  # \ud800 as JSON has it
        client.send(msg_frame({"t": "ping", "token": 42}))
        return [(f.stream, f.header) for f in client.frames(2)]
    finally:
        client.close()


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def audited(tmp_path: Path) -> Setup:
    s = await make_setup(tmp_path, audit=tmp_path / "audit.jsonl")
    yield s  # type: ignore[misc]
    await s.server.close()


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_an_odd_request_gets_a_stream_error(audited: Setup, name: str) -> None:
    before = _descriptors()
    frames = await asyncio.to_thread(_ask, audited, REQUESTS[name])
    assert len(frames) == 2, f"no answer for the request: {frames}"
    (stream, error), (zero, pong) = frames
    assert stream == 1 and error is not None and error["t"] == "error", frames
    assert error["code"] in ("bad_request", "failed", "spawn_failed", "not_found"), error
    assert zero == 0 and pong == {"t": "pong", "token": 42}, "the connection did not go on"
    await asyncio.sleep(0.1)
    assert _descriptors() <= before + 1  # nothing kept open for it (a socket may linger)
    assert not list(audited.root.iterdir())
    async with tether.connect("127.0.0.1", audited.port, home=audited.client_home,
                              accept_new=True) as conn:
        assert (await conn.run(["echo", "ok"])).stdout == b"ok\n"


async def test_many_odd_requests_keep_no_descriptors(setup: Setup) -> None:
    await asyncio.to_thread(_ask, setup, REQUESTS["get"])  # warm up
    before = _descriptors()
    for _ in range(3):
        for header in REQUESTS.values():
            await asyncio.to_thread(_ask, setup, header)
    await asyncio.sleep(0.2)
    assert _descriptors() <= before + 2


def test_the_audit_log_escapes_what_utf8_cannot_carry(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.event("command", argv=[SURROGATE, "é"])
    log.close()
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["argv"] == [SURROGATE, "é"]


async def test_a_confined_symlink_named_with_a_trailing_dot(setup: Setup, tmp_path: Path
                                                            ) -> None:
    """'x/.' names x in the root; its depth was counted from the path as written, one level too
    deep, so a confined client could store x -> .. (out of its root). Found by test_fuzz.py."""
    jail = tmp_path / "jail"
    jail.mkdir()
    jailed = generate_identity(tmp_path / "jailed", "jailed")
    add_authorized(setup.server.config.home,
                   AuthorizedClient(jailed.cert_der, "jailed", root=str(jail)))

    def attempt() -> list[dict[str, Any] | None]:
        client = RawClient.connect(setup.port, jailed, timeout=5)
        try:
            client.handshake()
            client.send(msg_frame({"t": "put", "path": "x/.", "kind": "symlink",
                                   "target": ".."}, stream=1))
            return [f.header for f in client.frames(1)]
        finally:
            client.close()

    (answer,) = await asyncio.to_thread(attempt)
    made = jail / "x"
    leads_to = os.path.realpath(made) if made.is_symlink() else None
    if made.is_symlink():
        made.unlink()
    assert leads_to is None, f"a confined client made {made} -> {leads_to}"
    assert answer is not None and answer["code"] == "unsafe_path", answer
