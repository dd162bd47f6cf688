"""Frame codec: the fixed prefix, the JSON header and the raw body, with every cap checked early.

A frame on the wire (docs/PROTOCOL.md, "Frames")::

    magic 2s | kind B | channel B | stream I | header_len I | body_len I | header | body

The 16-byte prefix is in network byte order. ``kind`` is MSG (a JSON header, optional body) or
DATA (no header, a non-empty raw body on ``channel``). Lengths are checked against the caps as soon
as the prefix is complete, before any buffer for the rest exists, so a peer cannot make us
allocate more than one frame's worth. This module is pure: bytes in, frames out.
"""

from __future__ import annotations

import json
import math
import struct

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.records import Value, init

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"\x54\xe7"
PREFIX = struct.Struct(">2sBBIII")
PREFIX_SIZE = PREFIX.size  # 16
MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_DEPTH = 8
MAX_STREAM_ID = 2**32 - 1  # the prefix's stream field is an unsigned 32-bit integer

KIND_MSG = 1
KIND_DATA = 2
CHANNELS = (0, 1, 2)  # 0 data/stdin, 1 stdout, 2 stderr


class Frame(Value):
    """One decoded frame. ``header`` is None for DATA frames."""

    ORDER = __slots__ = ("kind", "stream", "channel", "header", "body")
    kind: int
    stream: int
    channel: int
    header: dict[str, Any] | None
    body: bytes

    def __init__(self, kind: int, stream: int, channel: int, header: dict[str, Any] | None,
                 body: bytes) -> None:
        init(self, "kind", kind)
        init(self, "stream", stream)
        init(self, "channel", channel)
        init(self, "header", header)
        init(self, "body", body)


def encode_msg(stream: int, header: dict[str, Any], body: bytes = b"") -> bytes:
    """The bytes of a MSG frame; raises LocalProtocolError if it would break a cap or if the
    header holds a value JSON cannot carry (NaN, infinity, bytes...)."""
    _check_stream_id(stream)
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"header cannot be sent as JSON: {exc}") from exc
    raw = text.encode()
    if len(raw) > MAX_HEADER:
        raise LocalProtocolError(f"header of {len(raw)} bytes exceeds the {MAX_HEADER}-byte cap")
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"body of {len(body)} bytes exceeds the {MAX_BODY}-byte cap")
    return PREFIX.pack(MAGIC, KIND_MSG, 0, stream, len(raw), len(body)) + raw + body


def encode_data_prefix(stream: int, channel: int, size: int) -> bytes:
    """The prefix of a DATA frame, so callers can send a body without copying it."""
    _check_stream_id(stream)
    if not 0 < size <= MAX_BODY:
        raise LocalProtocolError(f"data frame body must be 1..{MAX_BODY} bytes, not {size}")
    if channel not in CHANNELS:
        raise LocalProtocolError(f"data frame on unknown channel {channel}")
    return PREFIX.pack(MAGIC, KIND_DATA, channel, stream, 0, size)


def _check_stream_id(stream: int) -> None:
    if not 0 <= stream <= MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {stream} is outside 0..{MAX_STREAM_ID}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a header")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r} in header")
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, iteratively (no recursion for a hostile input)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            todo.extend((child, level + 1) for child in children)
    return deepest


def parse_header(raw: bytes) -> dict[str, Any]:
    """Decode a JSON header strictly: UTF-8, an object, no NaN/Infinity, no duplicate keys."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
            parse_float=_finite_float,
        )
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"header is not valid UTF-8 ({exc.reason})") from exc
    except RecursionError as exc:
        raise RemoteProtocolError("header nests too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, our hooks, int digit limit
        raise RemoteProtocolError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RemoteProtocolError("header must be a JSON object")
    if _depth(value) > MAX_DEPTH:
        raise RemoteProtocolError(f"header nests deeper than {MAX_DEPTH} levels")
    return value


class FrameDecoder:
    """Accumulates bytes and yields whole frames, however the stream was split or merged."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self.buffered < PREFIX_SIZE:
            self._check_eof()
            return None
        magic, kind, channel, stream, hlen, blen = PREFIX.unpack_from(self._buf, self._pos)
        _check_prefix(magic, kind, channel, hlen, blen)
        total = PREFIX_SIZE + hlen + blen
        if self.buffered < total:
            self._check_eof()
            return None
        start = self._pos + PREFIX_SIZE
        header = parse_header(bytes(self._buf[start : start + hlen])) if hlen else None
        body = bytes(self._buf[start + hlen : start + hlen + blen])
        self._pos += total
        return Frame(kind, stream, channel, header, body)

    def _check_eof(self) -> None:
        if self._eof and self.buffered:
            raise RemoteProtocolError(
                f"connection closed in the middle of a frame ({self.buffered} bytes pending)"
            )


def _check_prefix(magic: bytes, kind: int, channel: int, hlen: int, blen: int) -> None:
    if magic != MAGIC:
        raise RemoteProtocolError(f"bad frame magic {magic!r}: not a tether peer")
    if hlen > MAX_HEADER:
        raise RemoteProtocolError(f"header length {hlen} exceeds the {MAX_HEADER}-byte cap")
    if blen > MAX_BODY:
        raise RemoteProtocolError(f"body length {blen} exceeds the {MAX_BODY}-byte cap")
    if kind == KIND_MSG:
        if hlen == 0:
            raise RemoteProtocolError("message frame with an empty header")
        if channel != 0:
            raise RemoteProtocolError("message frame with a non-zero channel")
    elif kind == KIND_DATA:
        if hlen != 0:
            raise RemoteProtocolError("data frame with a header")
        if blen == 0:
            raise RemoteProtocolError("data frame with an empty body")
        if channel not in CHANNELS:
            raise RemoteProtocolError(f"data frame on unknown channel {channel}")
    else:
        raise RemoteProtocolError(f"unknown frame kind {kind}")
