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
from collections import deque

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
RING_SIZE = 64 * 1024  # the decoder's shared buffer for prefixes, headers and small bodies
DIRECT_MIN = 128 * 1024  # DATA bodies above this are received into a buffer of their own...
DIRECT_AFTER = 32 * 1024  # ...once this much of them has arrived


class Frame(Value):
    """One decoded frame. ``header`` is None for DATA frames."""

    ORDER = __slots__ = ("kind", "stream", "channel", "header", "body")
    kind: int
    stream: int
    channel: int
    header: dict[str, Any] | None
    body: bytes | bytearray

    def __init__(self, kind: int, stream: int, channel: int, header: dict[str, Any] | None,
                 body: bytes | bytearray) -> None:
        init(self, "kind", kind)
        init(self, "stream", stream)
        init(self, "channel", channel)
        init(self, "header", header)
        init(self, "body", body)


def encode_msg(stream: int, header: dict[str, Any], body: bytes = b"") -> bytes:
    """The bytes of a MSG frame; raises LocalProtocolError if it would break a cap or if the
    header holds a value JSON or UTF-8 cannot carry (NaN, infinity, bytes, a lone surrogate)."""
    _check_stream_id(stream)
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"header cannot be sent as JSON: {exc}") from exc
    try:
        raw = text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800"): UTF-8 cannot carry it
        raise LocalProtocolError(f"header cannot be sent: text that is not valid Unicode "
                                 f"({exc.reason})") from exc
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
    if not isinstance(value, dict | list):
        return 0
    deepest, todo = 0, [(value, 1)]
    while todo:  # only containers are queued: a long list of scalars costs one C-level scan
        item, level = todo.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        if not {dict, list} & set(map(type, children)):
            continue  # scalars only (a sync_list's columns): one C-level pass
        nested = [child for child in children if isinstance(child, dict | list)]
        if nested:
            todo.extend((child, level + 1) for child in nested)
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
    """Accumulates bytes and yields whole frames, however the stream was split or merged.

    Bytes come in by :meth:`feed` (a copy) or, without a copy, by writing into the space
    :meth:`get_buffer` hands out and reporting it with :meth:`buffer_updated` (what
    ``asyncio.BufferedProtocol`` and ``socket.recv_into`` do). Complete frames are split off as
    soon as they are in; a bad prefix is reported after the frames before it. Small frames share
    one buffer; the body of a large DATA frame, once part of it has arrived, gets a buffer of its
    own that the rest is received straight into and that becomes the frame's body (a
    ``bytearray``, never copied again). Nothing is allocated for a frame before its prefix has
    passed every cap, and a body buffer only after ``DIRECT_AFTER`` of its bytes arrived, so a
    peer cannot make us hold more than 32 times what it sent, and at most one frame's worth.
    """

    def __init__(self) -> None:
        self._buf: bytearray | None = None  # unparsed bytes in [_start, _end); None when empty
        self._start = 0
        self._end = 0
        self._body: bytearray | None = None  # a large DATA body being received into
        self._body_fill = 0
        self._body_frame: tuple[int, int, int] = (0, 0, 0)  # kind, stream, channel
        self._ready: deque[tuple[int, int, int, bytes | None, bytes | bytearray]] = deque()
        self._queued = 0  # bytes in _ready
        self._error: RemoteProtocolError | None = None
        self._eof = False

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received of the frame not yet complete (0 between frames)."""
        return self._end - self._start + self._body_fill

    @property
    def queued(self) -> int:
        """Bytes of complete frames not yet taken by :meth:`next_frame`."""
        return self._queued

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        view = memoryview(data)
        if not view:
            self._eof = True
            return
        while view:
            space = self.get_buffer(len(view))
            n = min(len(space), len(view))
            space[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable space for the next received bytes (never empty); report them with
        :meth:`buffer_updated` before asking again."""
        if self._body is not None:
            return memoryview(self._body)[self._body_fill :]
        if self._error is not None:  # the stream is dead: whatever arrives is dropped
            self._buf, self._start, self._end = bytearray(PREFIX_SIZE), 0, 0
            return memoryview(self._buf)
        need = self._front_need()
        if need < 0:
            return self._start_body()
        buf, have = self._buf, self._end - self._start
        if buf is None:
            hint = min(sizehint, RING_SIZE) if sizehint > 0 else RING_SIZE
            buf = self._buf = bytearray(max(need, hint))
        elif len(buf) < need:
            grown = bytearray(need)
            grown[:have] = buf[self._start : self._end]
            buf, self._buf, self._start, self._end = grown, grown, 0, have
        elif len(buf) - self._start < need or (self._start and self._end == len(buf)):
            buf[:have] = buf[self._start : self._end]  # move the partial frame to the front
            self._start, self._end = 0, have
        return memoryview(buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last :meth:`get_buffer` space."""
        if self._error is not None:
            return
        if self._body is not None:
            self._body_fill += nbytes
            if self._body_fill == len(self._body):
                kind, stream, channel = self._body_frame
                self._ready.append((kind, stream, channel, None, self._body))
                self._queued += len(self._body)
                self._body, self._body_fill = None, 0
            return
        self._end += nbytes
        self._split()

    def take_unread(self) -> bytes | None:
        """Every byte received and not yet taken, as it came on the wire (complete frames
        re-framed, then the partial one), emptying the decoder: for handing the rest of a
        connection to another reader (server/privsep.py). None while a large body is being
        received or after an error (those bytes are not kept whole)."""
        if self._body is not None or self._error is not None:
            return None
        out = bytearray()
        for kind, stream, channel, raw, body in self._ready:
            out += PREFIX.pack(MAGIC, kind, channel, stream, len(raw) if raw else 0, len(body))
            out += (raw or b"") + body
        if self._buf is not None:
            out += self._buf[self._start : self._end]
        self._ready.clear()
        self._queued = 0
        self._buf, self._start, self._end = None, 0, 0
        return bytes(out)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._ready:
            kind, stream, channel, raw, body = self._ready.popleft()
            self._queued -= len(body) + (len(raw) if raw else 0)
            header = parse_header(raw) if raw is not None else None
            return Frame(kind, stream, channel, header, body)
        if self._error is not None:
            raise self._error
        if self._eof and self.buffered:
            raise RemoteProtocolError(
                f"connection closed in the middle of a frame ({self.buffered} bytes pending)"
            )
        return None

    # --- internals -----------------------------------------------------------------------------

    def _front_need(self) -> int:
        """Room the partial frame at the front needs in the shared buffer (growing at most to
        twice what arrived); -1 if its body should get a buffer of its own now."""
        have = self._end - self._start
        if have < PREFIX_SIZE:
            return PREFIX_SIZE
        assert self._buf is not None  # the prefix passed its checks in _split
        kind, hlen, blen = _kind_and_lengths(self._buf, self._start)
        if kind == KIND_DATA and blen > DIRECT_MIN:
            return -1 if have - PREFIX_SIZE >= DIRECT_AFTER else PREFIX_SIZE + DIRECT_AFTER
        return min(PREFIX_SIZE + hlen + blen, max(RING_SIZE, 2 * have))

    def _start_body(self) -> memoryview:
        assert self._buf is not None
        _, kind, channel, stream, _, blen = PREFIX.unpack_from(self._buf, self._start)
        body = bytearray(blen)
        got = self._end - self._start - PREFIX_SIZE
        body[:got] = self._buf[self._start + PREFIX_SIZE : self._end]
        self._body, self._body_fill, self._body_frame = body, got, (kind, stream, channel)
        self._start = self._end = 0
        self._buf = None  # between large bodies the shared buffer holds nothing: let it go
        return memoryview(body)[got:]

    def _split(self) -> None:
        """Move every complete frame out of the shared buffer (checking each prefix once)."""
        buf = self._buf
        assert buf is not None
        while self._end - self._start >= PREFIX_SIZE:
            magic, kind, channel, stream, hlen, blen = PREFIX.unpack_from(buf, self._start)
            try:
                _check_prefix(magic, kind, channel, hlen, blen)
            except RemoteProtocolError as exc:
                self._error = exc
                self._buf, self._start, self._end = None, 0, 0
                return
            total = PREFIX_SIZE + hlen + blen
            if self._end - self._start < total:
                break
            at = self._start + PREFIX_SIZE
            raw = bytes(buf[at : at + hlen]) if hlen else None
            body = bytes(buf[at + hlen : at + hlen + blen])
            self._ready.append((kind, stream, channel, raw, body))
            self._queued += hlen + blen
            self._start += total
        if self._start == self._end:  # between frames nothing is held: an idle connection
            self._buf, self._start, self._end = None, 0, 0  # costs no buffer at all


def _kind_and_lengths(buf: bytearray, at: int) -> tuple[int, int, int]:
    """(kind, header length, body length) of the (already checked) prefix at ``at``."""
    _, kind, _, _, hlen, blen = PREFIX.unpack_from(buf, at)
    return int(kind), int(hlen), int(blen)


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
