"""A raw client for hostile tests: real TLS with an authorized identity, then arbitrary bytes.

It speaks the wire format through the sans-I/O core where a test wants valid frames, and sends
hand-made bytes where it wants invalid ones, then reads what the server answers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from tether.identity import Identity
from tether.protocol import Connection, Hello, Role, Welcome
from tether.protocol.frames import KIND_MSG, MAGIC, PREFIX, FrameDecoder
from tether.tls import client_context


def msg_frame(header: dict[str, Any] | bytes, stream: int = 0, body: bytes = b"") -> bytes:
    """A MSG frame with any header at all (already-encoded bytes are sent as they are)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return PREFIX.pack(MAGIC, KIND_MSG, 0, stream, len(raw), len(body)) + raw + body


@dataclass
class RawClient:
    sock: ssl.SSLSocket | socket.socket

    @classmethod
    def connect(cls, port: int, identity: Identity | None, timeout: float = 10.0) -> RawClient:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if identity is None:
            return cls(raw)
        return cls(client_context(identity).wrap_socket(raw))

    def handshake(self) -> Welcome:
        proto = Connection(Role.CLIENT)
        self.sock.sendall(proto.send(Hello(versions=[1])))
        frame = self.frames(1)[0]
        assert frame.header is not None and frame.header["t"] == "welcome", frame
        return Welcome(version=frame.header["version"])

    def send(self, data: bytes) -> None:
        """Send; the server may close mid-way (that is often the point), which is not an error."""
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            self.sock.sendall(data)

    def frames(self, count: int = 1) -> list[Any]:
        """Read ``count`` frames (fewer if the server closes first)."""
        decoder, out = FrameDecoder(), []
        while len(out) < count:
            frame = decoder.next_frame()
            if frame is not None:
                out.append(frame)
                continue
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                break
            decoder.feed(data)
        return out

    def read_until_closed(self, limit: float = 10.0) -> bytes:
        self.sock.settimeout(limit)
        chunks = []
        try:
            while data := self.sock.recv(65536):
                chunks.append(data)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        return b"".join(chunks)

    def error(self) -> dict[str, Any] | None:
        """The stream-0 error frame the server sent before closing, if any."""
        for frame in self.frames(4):
            if frame.header and frame.header.get("t") == "error" and frame.stream == 0:
                header: dict[str, Any] = frame.header
                return header
        return None

    def close(self) -> None:
        self.sock.close()


def prefix(kind: int, channel: int, stream: int, hlen: int, blen: int,
           magic: bytes = MAGIC) -> bytes:
    return struct.pack(">2sBBIII", magic, kind, channel, stream, hlen, blen)
