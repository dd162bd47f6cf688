"""The discovery datagrams (docs/PROTOCOL.md, "Discovery"), sans-I/O: bytes in, values out.

UDP keeps a datagram's boundaries, so there is no framing to do; what matters is what a server
will send to an address it cannot verify. Two rules make discovery useless as an amplifier:

- a probe is padded to at least :data:`PROBE_MIN` bytes, and every reply fits in
  :data:`REPLY_MAX` < :data:`PROBE_MIN` bytes, so a reply is never larger than the probe that
  asked for it (:func:`encode_reply` is given the probe's length and refuses to exceed it);
- anything else (a wrong magic, version or type, a short or long datagram, trailing bytes in a
  reply) is a :class:`DatagramError` whose ``reason`` the server counts, and is never answered.

Layout (integers big-endian)::

    header   magic "TDSC" (4) | version 1 (1) | type (1): 1 probe, 2 reply | reserved 0 (2)
    nonce    16 random bytes chosen by the prober, echoed by the reply
    probe    header | nonce | zero padding to PROBE_MIN..PROBE_MAX bytes in all
    reply    header | nonce | port (2) | address | name | fingerprint | version
             (each string: length (1) then that many bytes of UTF-8, capped below)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"TDSC"
VERSION = 1
PROBE, REPLY = 1, 2
HEADER = struct.Struct("!4sBBH")
NONCE_SIZE = 16
PROBE_MIN = 256
PROBE_MAX = 1024
# the longest each reply string may be, in bytes: address, name, fingerprint, version
CAPS = (64, 64, 64, 32)
REPLY_MAX = HEADER.size + NONCE_SIZE + 2 + sum(1 + cap for cap in CAPS)
assert REPLY_MAX < PROBE_MIN  # the no-amplification rule holds for every possible reply

MALFORMED, OVERSIZED = "malformed", "oversized"


class DatagramError(ValueError):
    """A datagram that is not a valid probe or reply; ``reason`` is what the server counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason} datagram: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Announcement:
    """What a discoverable server says about itself. Unauthenticated: the fingerprint is a
    claim, checked only when a TLS connection is made to the server."""

    address: str
    port: int
    name: str
    fingerprint: str
    version: str


def encode_probe(nonce: bytes, size: int = PROBE_MIN) -> bytes:
    """A probe of ``size`` bytes (zero padding makes room for any reply)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes")
    if not PROBE_MIN <= size <= PROBE_MAX:
        raise ValueError(f"a probe is {PROBE_MIN} to {PROBE_MAX} bytes")
    head = HEADER.pack(MAGIC, VERSION, PROBE, 0) + nonce
    return head + bytes(size - len(head))


def _check_header(data: bytes, kind: int) -> bytes:
    """The nonce, after checking magic, version, type and reserved bits."""
    if len(data) < HEADER.size + NONCE_SIZE:
        raise DatagramError(MALFORMED, f"{len(data)} bytes is shorter than a header")
    magic, version, dtype, reserved = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DatagramError(MALFORMED, "wrong magic")
    if version != VERSION:
        raise DatagramError(MALFORMED, f"version {version}")
    if dtype != kind or reserved != 0:
        raise DatagramError(MALFORMED, f"type {dtype}, reserved {reserved}")
    return data[HEADER.size:HEADER.size + NONCE_SIZE]


def decode_probe(data: bytes) -> bytes:
    """The nonce of a valid probe; a :class:`DatagramError` for anything else."""
    if len(data) > PROBE_MAX:
        raise DatagramError(OVERSIZED, f"{len(data)} bytes > {PROBE_MAX}")
    if len(data) < PROBE_MIN:
        raise DatagramError(MALFORMED, f"{len(data)} bytes < {PROBE_MIN}: too small to answer")
    return _check_header(data, PROBE)


def _clip(text: str, cap: int) -> bytes:
    """UTF-8 of ``text``, cut at a character boundary to at most ``cap`` bytes."""
    return text.encode("utf-8")[:cap].decode("utf-8", "ignore").encode("utf-8")


def encode_reply(nonce: bytes, ann: Announcement, probe_size: int) -> bytes:
    """The reply to a probe of ``probe_size`` bytes; never longer than that probe."""
    fields = (ann.address, ann.name, ann.fingerprint, ann.version)
    body = b"".join(
        bytes([len(raw)]) + raw for raw in (_clip(f, cap) for f, cap in zip(fields, CAPS,
                                                                             strict=True))
    )
    reply = HEADER.pack(MAGIC, VERSION, REPLY, 0) + nonce + struct.pack("!H", ann.port) + body
    if len(reply) > probe_size:
        raise ValueError(f"a {len(reply)}-byte reply would exceed the {probe_size}-byte probe")
    return reply


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _is_fingerprint(text: str) -> bool:
    """Empty (a plaintext server) or ``SHA256:`` and 43 characters of unpadded base64: what a
    client may write into known_hosts, so nothing else (a newline adding a pin for another
    host, a control character) is accepted from an unauthenticated datagram."""
    body = text.encode()[7:]
    return not text or (text.startswith("SHA256:") and len(body) == 43
                        and all(c in _B64 for c in body))


def decode_reply(data: bytes) -> tuple[bytes, Announcement]:
    """(nonce, announcement) of a valid reply; a :class:`DatagramError` for anything else."""
    if len(data) > REPLY_MAX:
        raise DatagramError(OVERSIZED, f"{len(data)} bytes > {REPLY_MAX}")
    nonce = _check_header(data, REPLY)
    pos = HEADER.size + NONCE_SIZE
    if len(data) < pos + 2:
        raise DatagramError(MALFORMED, "no port")
    (port,) = struct.unpack_from("!H", data, pos)
    pos += 2
    texts = []
    for cap in CAPS:
        if pos >= len(data) or data[pos] > cap or pos + 1 + data[pos] > len(data):
            raise DatagramError(MALFORMED, "a string overruns the datagram or its cap")
        raw = data[pos + 1:pos + 1 + data[pos]]
        pos += 1 + len(raw)
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DatagramError(MALFORMED, "a string is not UTF-8") from exc
    if pos != len(data):
        raise DatagramError(MALFORMED, f"{len(data) - pos} trailing bytes")
    if port == 0:
        raise DatagramError(MALFORMED, "port 0")
    if not _is_fingerprint(texts[2]):
        raise DatagramError(MALFORMED, "the fingerprint is not SHA256:BASE64 (or empty)")
    return nonce, Announcement(texts[0], port, texts[1], texts[2], texts[3])
