"""The classic protocol's pure parts: detection, headers, names, replies, configuration."""

from __future__ import annotations

import json
import struct

import pytest

from tether.errors import TetherError, UnsafePath
from tether.server.classic import (
    MAX_HEADER,
    FileRequest,
    Malformed,
    ShellResult,
    basename,
    command_reply,
    is_file_request,
    may_be_file_request,
    pack_header,
    parse_header,
)
from tether.server.config import ClassicConfig, classic_config


def header(obj: object) -> bytes:
    raw = json.dumps(obj).encode()
    return struct.pack("<i", len(raw)) + raw


# --- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    header({"opt": "upload", "filename": "a", "filesize": 1}),
    struct.pack("<i", 1) + b"{",
    struct.pack("<i", MAX_HEADER) + b"{",
])
def test_file_requests_are_detected(data: bytes) -> None:
    assert is_file_request(data)


@pytest.mark.parametrize("data", [
    b"ls", b"date", b"echo {}", b"ls -l\n", "ünï {".encode(),
    struct.pack("<i", 0) + b"{",
    struct.pack("<i", -5) + b"{",
    struct.pack("<i", MAX_HEADER + 1) + b"{",
    struct.pack("<i", 20) + b"[",
    struct.pack("<i", 20),
])
def test_everything_else_is_a_command(data: bytes) -> None:
    assert not is_file_request(data)


def test_a_lone_plausible_length_waits_for_more() -> None:
    assert may_be_file_request(struct.pack("<i", 40))
    assert not may_be_file_request(b"date")  # 0x65746164: far too long for a header
    assert not may_be_file_request(struct.pack("<i", 40) + b"{")
    assert not may_be_file_request(b"ls")


def test_every_prefix_of_a_header_decides_no_earlier_than_its_fifth_byte() -> None:
    data = header({"opt": "download", "filename": "x"})
    assert [is_file_request(data[:n]) for n in range(6)] == [False] * 5 + [True]


# --- headers -------------------------------------------------------------------------------------


def test_pack_and_parse_round_trip() -> None:
    packed = pack_header({"opt": "upload", "filename": "r.txt", "filesize": 12})
    (n,) = struct.unpack("i", packed[:4])
    assert n == len(packed) - 4
    assert parse_header(packed[4:], 100) == FileRequest("upload", "r.txt", 12)


def test_download_needs_no_filesize() -> None:
    raw = json.dumps({"opt": "download", "filename": "r.txt", "filesize": None}).encode()
    assert parse_header(raw, 100) == FileRequest("download", "r.txt", 0)
    raw = json.dumps({"opt": "download", "filename": "r.txt"}).encode()
    assert parse_header(raw, 100).opt == "download"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json}", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    (b"[" * 100_000, "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"opt": "delete", "filename": "a", "filesize": 1}', "neither upload nor download"),
    (b'{"opt": "upload", "filename": 7, "filesize": 1}', "filename is not a string"),
    (b'{"opt": "upload", "filename": "a"}', "filesize"),
    (b'{"opt": "upload", "filename": "a", "filesize": -1}', "filesize"),
    (b'{"opt": "upload", "filename": "a", "filesize": true}', "filesize"),
    (b'{"opt": "upload", "filename": "a", "filesize": "3"}', "filesize"),
    (b'{"opt": "upload", "filename": "a", "filesize": 1.5}', "filesize"),
    (b'{"opt": "upload", "filename": "a", "filesize": 101}', "exceeds the limit of 100"),
])
def test_malformed_headers(raw: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason) as info:
        parse_header(raw, 100)
    assert "\n" not in str(info.value)


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "name"), [
    ("report.txt", "report.txt"), ("../x", "x"), ("a/b/c.txt", "c.txt"),
    ("/etc/passwd", "passwd"), ("C:\\Users\\me\\x.txt", "x.txt"), ("..\\..\\y", "y"),
    (".bashrc", ".bashrc"),
])
def test_only_the_basename_is_used(given: str, name: str) -> None:
    assert basename(given) == name


@pytest.mark.parametrize("given", ["", ".", "..", "a/..", "dir/", "../", "x\0y"])
def test_unusable_names_are_refused(given: str) -> None:
    with pytest.raises(UnsafePath):
        basename(given)


# --- replies -------------------------------------------------------------------------------------


def result(out: bytes = b"", err: bytes = b"", code: int = 0, timed_out: bool = False,
           truncated: bool = False) -> ShellResult:
    return ShellResult(code, out, err, timed_out, truncated, 0.01)


def test_reply_is_stdout_else_stderr() -> None:
    cfg = ClassicConfig()
    assert command_reply(result(b"out\n", b"err\n"), cfg, "utf-8") == b"out\n"
    assert command_reply(result(b"", b"err\n", 2), cfg, "utf-8") == b"err\n"


def test_reply_bytes_are_passed_through_untouched() -> None:
    raw = "café".encode("latin-1")
    assert command_reply(result(raw), ClassicConfig(), "utf-8") == raw


def test_reply_notes() -> None:
    cfg = ClassicConfig(timeout=2, max_output=10)
    assert command_reply(result(code=1), cfg, "utf-8") == b"tether: no output (exit status 1)\n"
    assert command_reply(result(code=-9), cfg, "utf-8") == (
        b"tether: no output (killed by signal 9)\n")
    assert command_reply(result(b"partial", timed_out=True, code=-15), cfg, "utf-8") == (
        b"partial\ntether: timed out after 2s; process group killed\n")
    assert command_reply(result(b"0123456789", truncated=True), cfg, "utf-8") == (
        b"0123456789\ntether: output truncated at 10 bytes\n")


# --- configuration -------------------------------------------------------------------------------


def test_classic_host_follows_a_loopback_tls_host() -> None:
    assert classic_config("127.0.0.1", 7722, 0, None, False).host == "127.0.0.1"
    assert classic_config("::1", 7722, 0, None, False).host == "::1"
    assert classic_config("127.0.0.2", 7722, 0, None, False).host == "127.0.0.2"


def test_classic_host_stays_on_loopback_when_tls_is_not() -> None:
    assert classic_config("0.0.0.0", 7722, 9000, None, False).host == "127.0.0.1"
    assert classic_config("192.0.2.7", 7722, 9000, None, False).host == "127.0.0.1"
    assert classic_config("localhost", 7722, 9000, None, False).host == "127.0.0.1"


def test_non_loopback_needs_the_flag() -> None:
    with pytest.raises(TetherError, match="i-understand-classic-is-unauthenticated"):
        classic_config("127.0.0.1", 7722, 9000, "0.0.0.0", False)
    cfg = classic_config("127.0.0.1", 7722, 9000, "0.0.0.0", True)
    assert (cfg.host, cfg.port, cfg.allow_remote) == ("0.0.0.0", 9000, True)


def test_ports() -> None:
    with pytest.raises(TetherError, match="differ from the TLS port"):
        classic_config("127.0.0.1", 7722, 7722, None, False)
    with pytest.raises(TetherError, match="not a port"):
        classic_config("127.0.0.1", 7722, 70000, None, False)
    assert classic_config("127.0.0.1", 0, 0, None, False).port == 0
