"""Malformed input: every bad prefix, header and message is a RemoteProtocolError naming the fault.

Prefix faults must be caught as soon as the 16-byte prefix is in, before the rest of the frame
is received (and so before anything is allocated for it).
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
from protocol_helpers import events_from, prefix, raw_data, raw_msg

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.connection import Connection
from tether.protocol.frames import (
    KIND_DATA,
    KIND_MSG,
    MAX_BODY,
    MAX_DEPTH,
    MAX_HEADER,
    PREFIX_SIZE,
    Frame,
    FrameDecoder,
    encode_data_prefix,
    encode_msg,
)
from tether.protocol.messages import Exec, Exit, Hello, Role, Started, Welcome

# --- the prefix ----------------------------------------------------------------------------

BAD_PREFIXES = {
    "bad magic": (prefix(magic=b"HT"), "bad frame magic"),
    "tls record": (bytes.fromhex("16030100f5010000f103035a") + bytes(4), "not a tether peer"),
    "msg without header": (prefix(KIND_MSG, 0, 0, 0, 10), "message frame with an empty header"),
    "msg on a channel": (prefix(KIND_MSG, 1, 0, 10, 0), "message frame with a non-zero channel"),
    "data with header": (prefix(KIND_DATA, 0, 1, 5, 5), "data frame with a header"),
    "data without body": (prefix(KIND_DATA, 0, 1, 0, 0), "data frame with an empty body"),
    "kind 0": (prefix(0, 0, 1, 5, 5), "unknown frame kind 0"),
    "kind 3": (prefix(3, 0, 1, 0, 5), "unknown frame kind 3"),
    "kind 255": (prefix(255, 0, 1, 0, 5), "unknown frame kind 255"),
    "channel 3": (prefix(KIND_DATA, 3, 1, 0, 5), "unknown channel 3"),
    "channel 255": (prefix(KIND_DATA, 255, 1, 0, 5), "unknown channel 255"),
    "header over cap": (prefix(KIND_MSG, 0, 0, MAX_HEADER + 1, 0), f"header length {2**16 + 1}"),
    "header 4 GiB": (prefix(KIND_MSG, 0, 0, 2**32 - 1, 0), "exceeds the 65536-byte cap"),
    "msg body over cap": (prefix(KIND_MSG, 0, 0, 2, MAX_BODY + 1), f"body length {MAX_BODY + 1}"),
    "data body over cap": (prefix(KIND_DATA, 0, 1, 0, MAX_BODY + 1), "exceeds the 1048576-byte"),
    "data body 4 GiB": (prefix(KIND_DATA, 0, 1, 0, 2**32 - 1), f"body length {2**32 - 1}"),
}


@pytest.mark.parametrize(("raw", "message"), BAD_PREFIXES.values(), ids=BAD_PREFIXES.keys())
def test_bad_prefix_fails_as_soon_as_the_prefix_is_in(raw: bytes, message: str) -> None:
    assert len(raw) == PREFIX_SIZE
    decoder = FrameDecoder()
    decoder.feed(raw[:-1])
    assert decoder.next_frame() is None  # one byte short: nothing to judge yet
    decoder.feed(raw[-1:])
    with pytest.raises(RemoteProtocolError, match=message):
        decoder.next_frame()


@pytest.mark.parametrize(("raw", "message"), BAD_PREFIXES.values(), ids=BAD_PREFIXES.keys())
def test_connection_rejects_bad_prefix_without_the_rest(raw: bytes, message: str) -> None:
    conn = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match=message):
        events_from(conn, raw)


def test_a_declared_length_allocates_nothing_before_the_bytes_arrive() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(prefix(KIND_DATA, 0, 1, 0, MAX_BODY))
        assert decoder.next_frame() is None
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            events_from(Connection(Role.SERVER), prefix(KIND_DATA, 0, 1, 0, 2**32 - 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_lengths_at_the_caps_are_accepted() -> None:
    header = {"t": "ping", "pad": ""}
    header["pad"] = "x" * (MAX_HEADER - len(json.dumps(header, separators=(",", ":"))))
    frames = [encode_msg(0, header, b"\x00" * MAX_BODY), encode_data_prefix(1, 2, MAX_BODY)]
    decoder = FrameDecoder()
    decoder.feed(frames[0] + frames[1] + b"\xff" * MAX_BODY)
    assert decoder.next_frame() == Frame(KIND_MSG, 0, 0, header, b"\x00" * MAX_BODY)
    assert decoder.next_frame() == Frame(KIND_DATA, 1, 2, None, b"\xff" * MAX_BODY)


def test_encoder_refuses_what_the_decoder_would_reject() -> None:
    with pytest.raises(LocalProtocolError, match=r"header of \d+ bytes exceeds"):
        encode_msg(0, {"t": "ping", "pad": "x" * MAX_HEADER})
    with pytest.raises(LocalProtocolError, match=r"body of \d+ bytes exceeds"):
        encode_msg(0, {"t": "ping"}, bytes(MAX_BODY + 1))
    for size in (0, -1, MAX_BODY + 1):
        with pytest.raises(LocalProtocolError, match="data frame body"):
            encode_data_prefix(1, 0, size)
    with pytest.raises(LocalProtocolError, match="unknown channel 3"):
        encode_data_prefix(1, 3, 1)
    for stream in (-1, 2**32):
        with pytest.raises(LocalProtocolError, match=f"stream id {stream} is outside"):
            encode_msg(stream, {"t": "ping"})
        with pytest.raises(LocalProtocolError, match=f"stream id {stream} is outside"):
            encode_data_prefix(stream, 0, 1)
    with pytest.raises(LocalProtocolError, match="cannot be sent as JSON"):
        encode_msg(0, {"t": "ping", "x": b"bytes"})


# --- the JSON header -----------------------------------------------------------------------


def deep(levels: int) -> str:
    """A header whose ``x`` field makes the whole object nest ``levels`` deep."""
    inner = levels - 1
    return '{"t":"ping","x":' + "[" * inner + "]" * inner + "}"


def big_int_header() -> bytes:
    head, tail = b'{"t":"ping","token":', b"}"
    return head + b"7" * (MAX_HEADER - len(head) - len(tail)) + tail


BAD_HEADERS: dict[str, tuple[bytes, str]] = {
    "truncated json": (b'{"t":"pi', "not valid JSON"),
    "trailing garbage": (b'{"t":"ping"} x', "not valid JSON"),
    "not utf-8": (b'{"t":"ping","x":"\xff\xfe"}', "not valid UTF-8"),
    "utf-16": ('{"t":"ping"}'.encode("utf-16"), "not valid UTF-8"),
    "NaN": (b'{"t":"ping","x":NaN}', "NaN is not allowed"),
    "Infinity": (b'{"t":"ping","x":Infinity}', "Infinity is not allowed"),
    "-Infinity": (b'{"t":"ping","x":[-Infinity]}', "-Infinity is not allowed"),
    "float overflow": (b'{"t":"ping","x":1e999}', "out of range"),
    "10000 deep": (deep(10_000).encode(), "nests"),
    "just over MAX_DEPTH": (deep(MAX_DEPTH + 1).encode(), f"deeper than {MAX_DEPTH} levels"),
    "deep objects": (('{"t":"ping","x":' + '{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH + "}")
                     .encode(), f"deeper than {MAX_DEPTH} levels"),
    "64 KiB integer": (big_int_header(), "not valid JSON.*digits"),
    "duplicate t": (b'{"t":"ping","t":"pong"}', "duplicate key 't'"),
    "duplicate nested": (b'{"t":"exec","argv":["x"],"env":{"A":"1","A":"2"}}', "duplicate key 'A'"),
    "array": (b'["ping"]', "must be a JSON object"),
    "string": (b'"ping"', "must be a JSON object"),
    "number": (b"1", "must be a JSON object"),
    "null": (b"null", "must be a JSON object"),
    "whitespace only": (b"   ", "not valid JSON"),
}


@pytest.mark.parametrize(("header", "message"), BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_header_is_rejected_by_the_decoder(header: bytes, message: str) -> None:
    assert len(header) <= MAX_HEADER
    decoder = FrameDecoder()
    decoder.feed(raw_msg(header))
    with pytest.raises(RemoteProtocolError, match=message):
        decoder.next_frame()


@pytest.mark.parametrize(("header", "message"), BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_header_is_rejected_by_a_connection(header: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        events_from(Connection(Role.SERVER), raw_msg(header))


def test_depth_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder()
    decoder.feed(raw_msg(deep(MAX_DEPTH).encode()))
    frame = decoder.next_frame()
    assert frame is not None and frame.header is not None
    assert frame.header["t"] == "ping"


# --- the message the header describes --------------------------------------------------------

BAD_MESSAGES: dict[str, tuple[dict[str, object], str]] = {
    "missing t": ({"versions": [1]}, 'no string "t"'),
    "t is a number": ({"t": 1}, 'no string "t"'),
    "t is null": ({"t": None}, 'no string "t"'),
    "t is a list": ({"t": ["hello"]}, 'no string "t"'),
    "unknown type": ({"t": "frobnicate"}, "unknown message type 'frobnicate'"),
    "empty type": ({"t": ""}, "unknown message type ''"),
    "private name": ({"t": "_private"}, "unknown message type '_private'"),
    "dunder class": ({"t": "__class__"}, "unknown message type '__class__'"),
    "dunder init": ({"t": "__init__"}, "unknown message type '__init__'"),
    "class name": ({"t": "Hello", "versions": [1]}, "unknown message type 'Hello'"),
    "long name": ({"t": "x" * 5000}, "unknown message type 'x{40}'$"),
    "bool for int": ({"t": "ping", "token": True}, "ping: field 'token' has the wrong type"),
    "float for int": ({"t": "credit", "size": 1.0}, "credit: field 'size' has the wrong type"),
    "string for int": ({"t": "started", "pid": "12"}, "started: field 'pid' has the wrong type"),
    "null for int": ({"t": "started", "pid": None}, "started: field 'pid' has the wrong type"),
    "string for list": ({"t": "hello", "versions": "1"}, "hello: field 'versions' has the wrong"),
    "ints for strs": ({"t": "exec", "argv": [1, 2]}, "exec: field 'argv' has the wrong type"),
    "mixed list": ({"t": "exec", "argv": ["ls", None]}, "exec: field 'argv' has the wrong type"),
    "bools for ints": ({"t": "hello", "versions": [True]}, "hello: field 'versions' has the wr"),
    "dict for list": ({"t": "exec", "argv": {"0": "ls"}}, "exec: field 'argv' has the wrong"),
    "int for bool": ({"t": "exec", "argv": ["ls"], "shell": 1}, "exec: field 'shell' has the"),
    "int env values": ({"t": "exec", "argv": ["ls"], "env": {"A": 1}}, "exec: field 'env' has"),
    "list for str": ({"t": "signal", "name": ["INT"]}, "signal: field 'name' has the wrong"),
    "str for float": ({"t": "exit", "status": 0, "duration": "1"}, "exit: field 'duration'"),
    "str for optional": ({"t": "exit", "status": "0"}, "exit: field 'status' has the wrong"),
    "missing argv": ({"t": "exec"}, "exec: missing field 'argv'"),
    "missing size": ({"t": "credit"}, "credit: missing field 'size'"),
    "missing status": ({"t": "exit", "signal": 9}, "exit: missing field 'status'"),
    "missing code": ({"t": "error", "message": "x"}, "error: missing field 'code'"),
}


@pytest.mark.parametrize(("header", "message"), BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_bad_message_is_rejected(header: dict[str, object], message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        events_from(Connection(Role.SERVER), raw_msg(header))


def test_unknown_fields_are_ignored_for_later_versions() -> None:
    header = {"t": "hello", "versions": [1], "compression": ["zstd"], "stream": 99}
    (event,) = events_from(Connection(Role.SERVER), raw_msg(header))
    assert event == Hello(versions=[1])  # stream comes from the prefix, never the header


def test_optional_field_takes_null_and_float_field_takes_an_int() -> None:
    client = Connection(Role.CLIENT)
    client.send(Hello(versions=[1]))
    welcome = raw_msg({"t": "welcome", "version": 1})
    exec_ok = raw_msg({"t": "started", "pid": 7}, stream=1)
    assert events_from(client, welcome) == [Welcome(version=1)]
    client.send(Exec(argv=["x"], stream=1))
    assert events_from(client, exec_ok) == [Started(pid=7, stream=1)]
    exit_null = raw_msg({"t": "exit", "status": None, "signal": 9, "duration": 1}, stream=1)
    assert events_from(client, exit_null) == [Exit(status=None, signal=9, duration=1, stream=1)]


def test_data_frames_are_checked_like_messages() -> None:
    with pytest.raises(RemoteProtocolError, match="data before the handshake"):
        events_from(Connection(Role.SERVER), raw_data(1, 0, b"x"))
