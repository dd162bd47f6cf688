"""Issue 13 item 8: integers no file offset, size or time can hold, and text UTF-8 cannot carry.

A ``put`` with ``mtime_ns = 2**100`` raised OverflowError in the handler and dropped the whole
connection, killing a command running beside it. Now every integer field is range-checked (signed
64-bit) and answered with ``bad_request`` on that stream only; and a client API call with a lone
surrogate raises a tether error, not UnicodeEncodeError.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether
from tether.errors import TetherError

from .conftest import Setup
from .rawclient import RawClient, msg_frame

HUGE = 2**100

OPENING: dict[str, dict[str, Any]] = {
    "put mtime_ns": {"t": "put", "path": "", "name": "f", "size": 1, "mtime_ns": HUGE},
    "put size": {"t": "put", "path": "", "name": "f", "size": HUGE},
    "put mode": {"t": "put", "path": "", "name": "f", "size": 1, "mode": -HUGE},
    "get offset": {"t": "get", "path": "x", "offset": HUGE},
    "batch mtimes": {"t": "batch", "path": "", "names": ["a"], "sizes": [1], "modes": [420],
                     "mtimes": [HUGE], "hashes": ["0" * 64]},
}


def _beside_a_command(setup: Setup, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Start a command on stream 1, send ``header`` on stream 3; (answer on 3, the command's
    stdout) once the command has exited."""
    client = RawClient.connect(setup.port, setup.client_id, timeout=10)
    try:
        client.handshake()
        client.send(msg_frame({"t": "exec", "argv": ["sh", "-c", "sleep 0.5; echo survived"],
                               "stdin": False}, stream=1))
        client.send(msg_frame(header, stream=3))
        answer: dict[str, Any] = {}
        out = b""
        for frame in client.frames(12):
            if frame.stream == 3 and frame.header is not None:
                answer = frame.header
            elif frame.stream == 1 and frame.header is None:
                out += bytes(frame.body)
            elif frame.stream == 1 and frame.header and frame.header["t"] == "exit":
                break
        return answer, out
    finally:
        client.close()


@pytest.mark.parametrize("name", list(OPENING))
async def test_an_out_of_range_integer_ends_only_its_stream(setup: Setup, name: str) -> None:
    answer, out = await asyncio.to_thread(_beside_a_command, setup, OPENING[name])
    assert answer.get("t") == "error" and answer.get("code") == "bad_request", answer
    assert "64-bit" in answer["message"]
    assert out == b"survived\n", "the command beside it did not finish"
    assert not list(setup.root.iterdir())


async def test_an_out_of_range_offset_in_begin(setup: Setup) -> None:
    """A message on an open stream (not only an opening one) is checked too."""
    def attempt() -> list[dict[str, Any] | None]:
        client = RawClient.connect(setup.port, setup.client_id, timeout=10)
        try:
            client.handshake()
            client.send(msg_frame({"t": "put", "path": "", "name": "f", "size": 1,
                                   "resume": True}, stream=1))
            ready = client.frames(1)[0].header
            client.send(msg_frame({"t": "begin", "offset": HUGE}, stream=1))
            client.send(msg_frame({"t": "ping", "token": 7}))
            return [ready] + [f.header for f in client.frames(2)]
        finally:
            client.close()

    ready, error, pong = await asyncio.to_thread(attempt)
    assert ready is not None and ready["t"] == "ready", ready
    assert error is not None and error["code"] == "bad_request", error
    assert pong == {"t": "pong", "token": 7}


async def test_a_lone_surrogate_in_an_api_call_is_a_tether_error(setup: Setup) -> None:
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        with pytest.raises(TetherError):
            await conn.run(["echo", "\ud800"])
        assert (await conn.run(["echo", "ok"])).stdout == b"ok\n"
