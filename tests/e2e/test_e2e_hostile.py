"""Bad input end to end: whatever a peer sends, the server answers what it can, closes that one
connection, and goes on serving real clients.

Frames are built here by hand from the wire format in docs/PROTOCOL.md ("Frames"):
``magic 2s | kind B | channel B | stream I | header_len I | body_len I | header | body``.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Any

import pytest

from tether.identity import load_identity
from tether.tls import client_context

if TYPE_CHECKING:
    from conftest import Client

PREFIX = struct.Struct(">2sBBIII")
MAGIC = b"\x54\xe7"
MSG, DATA = 1, 2
READ_TIMEOUT = 15.0


def frame(kind: int, stream: int, header: bytes = b"", body: bytes = b"", channel: int = 0,
          magic: bytes = MAGIC) -> bytes:
    return PREFIX.pack(magic, kind, channel, stream, len(header), len(body)) + header + body


def msg(header: dict[str, Any], stream: int = 0) -> bytes:
    return frame(MSG, stream, json.dumps(header).encode())


HELLO = msg({"t": "hello", "versions": [1], "software": "e2e-raw"})

BAD_FRAMES: dict[str, bytes] = {
    "bad magic": frame(MSG, 0, b'{"t":"ping"}', magic=b"GE"),
    "oversize header length": PREFIX.pack(MAGIC, MSG, 0, 0, 1 << 30, 0),
    "oversize body length": PREFIX.pack(MAGIC, DATA, 1, 1, 0, 1 << 30),
    "unknown frame kind": frame(9, 0, b'{"t":"ping"}'),
    "invalid json": frame(MSG, 0, b'{"t": "hello", versions: [1'),
    "json that is not an object": frame(MSG, 0, b"[1, 2, 3]"),
    "unknown message type": msg({"t": "teleport", "to": "mars"}),
    "server-only welcome": msg({"t": "welcome", "version": 1}),
    "server-only exit": msg({"t": "exit", "status": 0}, stream=1),
    "wrong field type": msg({"t": "exec", "argv": "not a list"}, stream=1),
    "data on stream 0": frame(DATA, 0, body=b"x", channel=0),
    "frame for a stream never opened": msg({"t": "eof", "channel": 0}, stream=7),
}
BEFORE_HELLO_ONLY = {"not hello first": msg({"t": "ping", "token": 1})}
AFTER_HELLO_ONLY = {"second hello": HELLO}


def parse_frames(data: bytes) -> list[tuple[int, int, dict[str, Any] | None, bytes]]:
    """(kind, stream, header, body) of each complete frame in ``data``."""
    frames, pos = [], 0
    while len(data) - pos >= PREFIX.size:
        magic, kind, _channel, stream, hlen, blen = PREFIX.unpack_from(data, pos)
        assert magic == MAGIC, f"server sent bad magic {magic!r}"
        start = pos + PREFIX.size
        if len(data) < start + hlen + blen:
            break
        header = json.loads(data[start:start + hlen]) if hlen else None
        frames.append((kind, stream, header, data[start + hlen:start + hlen + blen]))
        pos = start + hlen + blen
    return frames


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it leaves the connection open."""
    received = bytearray()
    sock.settimeout(READ_TIMEOUT)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open after {received[:200]!r}")
        except (ssl.SSLError, ConnectionError):
            break  # a TLS alert or a reset: closed either way
        if not chunk:
            break
        received += chunk
    return bytes(received)


def tls_connect(client: Client, authenticated: bool = True) -> ssl.SSLSocket:
    """A real TLS 1.3 connection to the server, with the client's identity (or none)."""
    if authenticated:
        ctx = client_context(load_identity(client.home))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", client.port), timeout=READ_TIMEOUT)
    sock: ssl.SSLSocket = ctx.wrap_socket(raw, server_hostname="tether")
    return sock


def assert_still_serving(client: Client) -> None:
    assert client.server.alive(), client.server.log_text()[-3000:]
    done = client.run("echo alive")
    assert (done.returncode, done.stdout) == (0, b"alive\n"), done.stderr


def assert_ended_with_protocol_error(received: bytes) -> None:
    frames = parse_frames(received)
    assert frames, f"no frame before the close: {received[:200]!r}"
    kind, stream, header, _ = frames[-1]
    assert (kind, stream) == (MSG, 0)
    assert header is not None and header["t"] == "error"
    assert header["code"] == "protocol", header
    assert isinstance(header["message"], str) and header["message"]


# --- below TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"\x00\xffgarbage" * 100,
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: e2e\r\n\r\n",
    b"\x16\x03\x01\x01\x2c" + b"\xff" * 300,  # a whole TLS handshake record of junk
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"",  # connect, say nothing, hang up
], ids=["binary", "http", "fake-client-hello", "ssh-banner", "silent-close"])
def test_plaintext_garbage_is_dropped(client: Client, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", client.port), timeout=READ_TIMEOUT) as sock:
        if payload:
            sock.sendall(payload)
            read_until_closed(sock)
        else:
            sock.shutdown(socket.SHUT_WR)
    assert_still_serving(client)


def test_tls_without_a_client_certificate_is_dropped(client: Client) -> None:
    try:
        with tls_connect(client, authenticated=False) as sock:
            sock.sendall(HELLO)
            received = read_until_closed(sock)
    except (ssl.SSLError, ConnectionError):
        received = b""
    assert b"welcome" not in received
    assert_still_serving(client)


# --- authenticated TLS, bad frames --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted({**BAD_FRAMES, **BEFORE_HELLO_ONLY}))
def test_bad_first_frame_gets_an_error_and_a_close(client: Client, name: str) -> None:
    with tls_connect(client) as sock:
        sock.sendall({**BAD_FRAMES, **BEFORE_HELLO_ONLY}[name])
        received = read_until_closed(sock)
    assert_ended_with_protocol_error(received)
    assert_still_serving(client)


@pytest.mark.parametrize("name", sorted({**BAD_FRAMES, **AFTER_HELLO_ONLY}))
def test_bad_frame_after_handshake_gets_an_error_and_a_close(client: Client, name: str) -> None:
    with tls_connect(client) as sock:
        sock.sendall(HELLO)
        sock.sendall({**BAD_FRAMES, **AFTER_HELLO_ONLY}[name])
        received = read_until_closed(sock)
    frames = parse_frames(received)
    assert frames and frames[0][2] is not None and frames[0][2]["t"] == "welcome"
    assert_ended_with_protocol_error(received)
    assert_still_serving(client)


@pytest.mark.parametrize("handshake", [False, True], ids=["before-hello", "after-hello"])
def test_frame_cut_off_by_a_close(client: Client, handshake: bool) -> None:
    with tls_connect(client) as sock:
        if handshake:
            sock.sendall(HELLO)
        sock.sendall(msg({"t": "exec", "argv": ["true"]}, stream=1)[:20])
    assert_still_serving(client)


def test_valid_raw_exec_works(client: Client) -> None:
    """The hand-built frames are right: the same path with a valid exec runs the command."""
    with tls_connect(client) as sock:
        sock.sendall(HELLO)
        sock.sendall(msg({"t": "exec", "argv": ["echo raw"], "shell": True, "stdin": False},
                         stream=1))
        received = bytearray()
        while not any(h and h["t"] == "exit" for _, _, h, _ in parse_frames(bytes(received))):
            chunk = sock.recv(65536)
            assert chunk, "closed before exit"
            received += chunk
    frames = parse_frames(bytes(received))
    assert [body for kind, _, _, body in frames if kind == DATA] == [b"raw\n"]
    exit_header = next(h for _, _, h, _ in frames if h and h["t"] == "exit")
    assert exit_header["status"] == 0
