"""The discovery datagram codec and the responder's rate limit, without sockets."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.discovery import (
    PROBE_MAX,
    PROBE_MIN,
    REPLY_MAX,
    Announcement,
    DatagramError,
    decode_probe,
    decode_reply,
    encode_probe,
    encode_reply,
)
from tether.server.discovery import DiscoveryResponder, RateLimit

NONCE = bytes(range(16))
ANN = Announcement("127.0.0.2", 7722, "n02", "SHA256:" + "A" * 43, "0.1.0")


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))


def test_probe_and_reply_round_trip() -> None:
    probe = encode_probe(NONCE)
    assert len(probe) == PROBE_MIN and decode_probe(probe) == NONCE
    reply = encode_reply(NONCE, ANN, len(probe))
    assert decode_reply(reply) == (NONCE, ANN)
    assert len(reply) <= len(probe)


@given(name=st.text(max_size=200), address=st.text(max_size=200), version=st.text(max_size=80))
def test_the_largest_reply_still_fits_the_smallest_probe(name: str, address: str,
                                                         version: str) -> None:
    ann = Announcement(address, 65535, name, "x" * 300, version)
    reply = encode_reply(NONCE, ann, PROBE_MIN)
    assert len(reply) <= REPLY_MAX < PROBE_MIN
    ann = Announcement(address, 65535, name, ANN.fingerprint, version)
    _nonce, back = decode_reply(encode_reply(NONCE, ann, PROBE_MIN))
    assert address.encode().startswith(back.address.encode())  # clipped, whole characters
    assert name.encode().startswith(back.name.encode())


@pytest.mark.parametrize("fingerprint", [
    "SHA256:" + "A" * 42 + "\n127.0.0.9 SHA256:" + "B" * 4,  # a second known_hosts line
    "SHA256:" + "A" * 42 + "\x1b", "SHA256:" + "A" * 42, "SHA256:" + "A" * 44,
    "MD5:" + "A" * 46, "sha256:" + "A" * 43, "SHA256:" + "A" * 42 + "=", " " + "A" * 43])
def test_a_reply_with_a_malformed_fingerprint_is_dropped(fingerprint: str) -> None:
    """The fingerprint goes into known_hosts with ``discover --add``: only the exact form
    ``SHA256:`` + 43 base64 characters (or empty, for a plaintext server) is a reply."""
    ann = Announcement("127.0.0.2", 7722, "n02", fingerprint, "0.1.0")
    with pytest.raises(DatagramError, match="fingerprint"):
        decode_reply(encode_reply(NONCE, ann, PROBE_MIN))
    plaintext = Announcement("127.0.0.2", 7722, "n02", "", "0.1.0")
    assert decode_reply(encode_reply(NONCE, plaintext, PROBE_MIN))[1] == plaintext


def test_reply_never_exceeds_its_probe() -> None:
    with pytest.raises(ValueError, match="exceed"):
        encode_reply(NONCE, ANN, 40)


@given(st.binary(max_size=PROBE_MAX + 10))
def test_any_bytes_are_a_probe_or_a_counted_error(data: bytes) -> None:
    try:
        assert len(decode_probe(data)) == 16
    except DatagramError as exc:
        assert exc.reason in ("malformed", "oversized")
    try:
        decode_reply(data)
    except DatagramError as exc:
        assert exc.reason in ("malformed", "oversized")


@pytest.mark.parametrize("cut", range(0, 60, 3))
def test_truncated_or_extended_replies_are_malformed(cut: int) -> None:
    reply = encode_reply(NONCE, ANN, PROBE_MIN)
    with pytest.raises(DatagramError):
        decode_reply(reply[:cut])
    with pytest.raises(DatagramError):
        decode_reply(reply + b"\0")


def test_rate_limit_buckets() -> None:
    limit = RateLimit(rate=2, burst=3, total_rate=100, max_sources=2)
    assert [limit.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("a", 0.5)  # one token back after half a second at 2/s
    assert limit.allow("b", 0.5) and limit.allow("c", 0.5)
    assert list(limit.sources) == ["b", "c"]  # the least recent source was forgotten
    total = RateLimit(rate=100, burst=100, total_rate=2)
    assert [total.allow(f"s{i}", 0.0) for i in range(3)] == [True, True, False]


def test_responder_counts_and_answers() -> None:
    responder = DiscoveryResponder(ANN, RateLimit(rate=1, burst=1))
    transport = _Transport()
    responder.connection_made(transport)  # type: ignore[arg-type]
    responder.datagram_received(b"junk", ("127.0.0.9", 1))
    responder.datagram_received(bytes(PROBE_MAX + 1), ("127.0.0.9", 1))
    nonce = os.urandom(16)
    responder.datagram_received(encode_probe(nonce, 300), ("127.0.0.9", 1))
    responder.datagram_received(encode_probe(nonce, 300), ("127.0.0.9", 1))
    assert dict(responder.counts) == {"malformed": 1, "oversized": 1, "answered": 1,
                                      "rate_limited": 1}
    ((reply, addr),) = transport.sent
    assert addr == ("127.0.0.9", 1) and len(reply) <= 300
    assert decode_reply(reply) == (nonce, ANN)
