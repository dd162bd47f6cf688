"""Bad input from an authenticated peer: each gets a clear error frame where possible, closes
only that connection, writes nothing, and leaves the server serving the next client."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.protocol.frames import KIND_DATA, KIND_MSG, MAX_BODY, MAX_HEADER

from .conftest import Setup
from .rawclient import RawClient, msg_frame, prefix

HELLO = msg_frame({"t": "hello", "versions": [1]})

BAD_FRAMES: dict[str, bytes] = {
    "bad magic": prefix(KIND_MSG, 0, 0, 2, 0, magic=b"GE") + b"{}",
    "empty header": prefix(KIND_MSG, 0, 0, 0, 0),
    "header over the cap": prefix(KIND_MSG, 0, 0, MAX_HEADER + 1, 0),
    "body over the cap": prefix(KIND_MSG, 0, 0, 2, MAX_BODY + 1),
    "huge body then nothing": prefix(KIND_DATA, 0, 1, 0, MAX_BODY),
    "unknown kind": prefix(9, 0, 0, 2, 0) + b"{}",
    "truncated json": msg_frame(b'{"t": "exec", "argv": ['),
    "not utf-8": msg_frame(b'{"t": "\xff\xfe"}'),
    "nan": msg_frame(b'{"t": "ping", "token": NaN}'),
    "deep nesting": msg_frame(b'{"t":"ping","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
    "million digits": msg_frame(b'{"t":"ping","token":' + b"9" * 60_000 + b"}"),
    "duplicate keys": msg_frame(b'{"t":"ping","t":"exec"}'),
    "not an object": msg_frame(b"[1, 2, 3]"),
    "wrong type": msg_frame({"t": "exec", "argv": "rm -rf /"}, stream=1),
    "unknown type": msg_frame({"t": "launch_missiles"}),
    "private name": msg_frame({"t": "_on_exec", "argv": ["true"]}, stream=1),
    "dunder name": msg_frame({"t": "__class__"}),
    "server-only welcome": msg_frame({"t": "welcome", "version": 1}),
    "server-only exit": msg_frame({"t": "exit", "status": 0}, stream=1),
    "server-only started": msg_frame({"t": "started", "pid": 1}, stream=1),
    "stdout data from a client": prefix(KIND_DATA, 1, 1, 0, 1) + b"x",
    "second hello": HELLO,
    "frame for unknown stream": msg_frame({"t": "eof", "channel": 0}, stream=7),
    "even stream id": msg_frame({"t": "exec", "argv": ["true"]}, stream=2),
    "data beyond the window": b"".join(
        [msg_frame({"t": "exec", "argv": ["sleep", "5"]}, stream=1)]
        + [prefix(KIND_DATA, 0, 1, 0, MAX_BODY) + b"\0" * MAX_BODY] * 5
    ),
}


def _still_serves(setup: Setup) -> None:
    with tether.SyncConnection("127.0.0.1", setup.port, home=setup.client_home,
                               accept_new=True) as conn:
        assert conn.run("echo still-here").stdout == b"still-here\n"


# A frame whose declared body never comes is not an error yet: the server waits for it (until
# the frame deadline), so the client, not the server, ends these connections.
INCOMPLETE = {"huge body then nothing"}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_frame_after_handshake(setup: Setup, name: str) -> None:
    client = await _authenticated(setup)
    await _in_thread(lambda: client.send(BAD_FRAMES[name]))
    if name not in INCOMPLETE:
        error = await _in_thread(client.error)
        assert error is not None, "the server closed without saying why"
        assert error["code"] == "protocol", error
        assert error["message"]
    client.close()
    await _in_thread(lambda: _still_serves(setup))


async def test_nothing_before_the_handshake(setup: Setup) -> None:
    """An exec before hello is a protocol error: nothing runs."""
    marker = setup.root / "ran"
    client: RawClient = await _in_thread(lambda: RawClient.connect(setup.port,
                                                                   setup.client_id))
    client.send(msg_frame({"t": "exec", "argv": ["touch", str(marker)]}, stream=1))
    error = await _in_thread(client.error)
    assert error is not None and error["code"] == "protocol"
    assert not marker.exists()
    await _in_thread(lambda: _still_serves(setup))


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    HELLO + msg_frame({"t": "exec", "argv": ["touch", "/tmp/should-not-exist-tether"]}, stream=1),
    b"\x16\x03\x01\x00\x05hello",
    b"\0" * 100_000,
], ids=["http", "plaintext-tether", "fake-tls", "zeros"])
async def test_plaintext_on_the_tls_port_is_never_interpreted(setup: Setup,
                                                              payload: bytes) -> None:
    client: RawClient = await _in_thread(lambda: RawClient.connect(setup.port, None))
    client.send(payload)
    answer = await _in_thread(client.read_until_closed)
    assert not answer.startswith(b"\x54\xe7")  # never a tether frame
    assert not Path("/tmp/should-not-exist-tether").exists()
    await _in_thread(lambda: _still_serves(setup))


async def test_tls12_client_is_refused(setup: Setup) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(setup.client_id.cert_path, setup.client_id.key_path)

    def attempt() -> None:
        with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw, \
                pytest.raises((ssl.SSLError, ConnectionError)):
            ctx.wrap_socket(raw)

    await _in_thread(attempt)
    await _in_thread(lambda: _still_serves(setup))


async def test_unsupported_version_is_refused_clearly(setup: Setup) -> None:
    client: RawClient = await _in_thread(lambda: RawClient.connect(setup.port,
                                                                   setup.client_id))
    client.send(msg_frame({"t": "hello", "versions": [99]}))
    error = await _in_thread(client.error)
    assert error is not None and error["code"] == "unsupported_version"
    assert "99" in error["message"] and "1" in error["message"]


async def _authenticated(setup: Setup) -> RawClient:
    client: RawClient = await _in_thread(lambda: RawClient.connect(setup.port,
                                                                   setup.client_id))
    await _in_thread(client.handshake)
    return client


async def _in_thread(func: Callable[[], Any]) -> Any:
    """Blocking socket work off the event loop (the server under test runs on it)."""
    return await asyncio.to_thread(func)


def test_bad_frames_cover_the_issue_list() -> None:
    assert len(BAD_FRAMES) >= 24
    assert json.loads(b'{"a": 1}') == {"a": 1}
