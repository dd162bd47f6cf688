"""The classic tutorial's two clients, as issue 8 describes them: a plain ``socket``, ``struct``
and ``json``, nothing from tether. The command client sends a command in one ``send`` and reads
the reply with one large ``recv``; the file client sends ``struct.pack('i', len(header))``, the
JSON header, then for an upload the raw bytes.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

BIG_RECV = 1024 * 1024


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect((host, port))
    return sock


def command(sock: socket.socket, text: str) -> bytes:
    """The command client: one send, one large recv."""
    sock.send(text.encode("utf-8"))
    return sock.recv(BIG_RECV)


def send_header(sock: socket.socket, header: dict[str, Any]) -> None:
    header_bytes = json.dumps(header).encode("utf-8")
    sock.send(struct.pack("i", len(header_bytes)))
    sock.send(header_bytes)


def upload(sock: socket.socket, path: Path, filename: str | None = None) -> None:
    """The file client's upload: header, then the file's bytes (the server sends no reply)."""
    filesize = path.stat().st_size
    send_header(sock, {"opt": "upload", "filename": filename or path.name,
                       "filesize": filesize})
    with path.open("rb") as f:
        for line in f:
            sock.sendall(line)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), BIG_RECV))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def download(sock: socket.socket, filename: str) -> tuple[dict[str, Any], bytes]:
    """The file client's download: the reply header, then ``filesize`` bytes."""
    send_header(sock, {"opt": "download", "filename": filename, "filesize": None})
    (length,) = struct.unpack("i", recv_exactly(sock, 4))
    header: dict[str, Any] = json.loads(recv_exactly(sock, length).decode("utf-8"))
    return header, recv_exactly(sock, header["filesize"])
