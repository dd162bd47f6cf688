"""Discovery over UDP against the farm: exactly the discoverable servers answer, ``--add``
pins only with consent, and hostile datagrams are dropped, counted and never amplified."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

from tether.client.discover import discover
from tether.identity import lookup_known_host
from tether.inventory import load
from tether.protocol.discovery import (
    PROBE_MAX,
    PROBE_MIN,
    decode_reply,
    encode_probe,
)
from tether.server.discovery import DiscoveryResponder

from .farm import ADDRESSES, DISCOVERABLE, Farm, atether, name_of

RANGE = "127.0.0.0/26"  # .1-.62: the farm, and silent addresses on both sides of it


def _responder(farm: Farm, address: str) -> DiscoveryResponder:
    server = farm.nodes[address].server
    assert server is not None and server.discovery is not None
    return server.discovery


def _exchange(address: str, port: int, datagrams: list[bytes], source: str,
              wait: float = 0.5) -> list[bytes]:
    """Send datagrams from ``source`` and collect every reply until ``wait`` passes quietly."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(wait)
        for data in datagrams:
            sock.sendto(data, (address, port))
        replies = []
        while True:
            try:
                replies.append(sock.recv(65535))
            except TimeoutError:
                return replies


async def test_api_finds_exactly_the_discoverable(farm: Farm) -> None:
    started = time.monotonic()
    found = await discover([RANGE], farm.port, wait=0.5, retries=3)
    assert [f.address for f in found] == DISCOVERABLE
    for f in found:
        node = farm.nodes[f.address]
        assert (f.port, f.name, f.fingerprint, f.version, f.announced) == (
            farm.port, node.name, node.identity.fingerprint, "0.1.0", f.address)
    assert time.monotonic() - started < 5


async def test_cli_lists_and_adds_with_accept_new(farm: Farm, tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    listed = await atether("discover", "--json", "-p", str(farm.port), RANGE, home=home)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["address"] for r in rows] == DISCOVERABLE
    assert {r["trust"] for r in rows} == {"new"}

    added = await atether("discover", "--add", "--accept-new", "-g", "found", "-p",
                          str(farm.port), RANGE, home=home)
    assert added.returncode == 0, added.stderr
    inventory = load(home)
    assert sorted(inventory.hosts) == sorted(name_of(a) for a in DISCOVERABLE)
    assert all(h.groups == ("found",) and h.port == farm.port for h in inventory.hosts.values())
    for address in DISCOVERABLE:
        pinned = lookup_known_host(home, address, farm.port)
        assert pinned == farm.nodes[address].identity.fingerprint

    again = await atether("discover", "-p", str(farm.port), RANGE, home=home)
    assert again.stdout.count(" pinned") == 30


async def test_add_without_consent_does_not_pin(farm: Farm, tmp_path: Path) -> None:
    home = tmp_path / "careful"
    added = await atether("discover", "--add", "-p", str(farm.port), *DISCOVERABLE[:3],
                          home=home)
    assert added.returncode == 0, added.stderr
    assert sorted(load(home).hosts) == [name_of(a) for a in DISCOVERABLE[:3]]
    assert not (home / "known_hosts").exists()
    assert added.stdout.count("not pinned") == 3


async def test_silent_range_exits_nonzero(farm: Farm, tmp_path: Path) -> None:
    done = await atether("discover", "--retries", "0", "--wait", "0.2", "-p", str(farm.port),
                         *ADDRESSES[30:33], home=tmp_path / "none")
    assert done.returncode == 1 and "no tether server answered" in done.stderr


async def test_range_too_large_is_refused(farm: Farm, tmp_path: Path) -> None:
    done = await atether("discover", "10.0.0.0/8", home=tmp_path / "none")
    assert done.returncode == 1 and "limit is 65536" in done.stderr


def test_bad_datagrams_are_dropped_counted_and_never_amplified(farm: Farm) -> None:
    address = DISCOVERABLE[0]
    responder = _responder(farm, address)
    before = dict(responder.counts)
    nonce = os.urandom(16)
    probe = encode_probe(nonce)
    garbage = [
        b"",                                         # empty
        b"hello",                                    # short
        b"XXXX" + probe[4:],                         # wrong magic
        probe[:4] + b"\x09" + probe[5:],             # unknown version
        probe[:5] + b"\x02" + probe[6:],             # a reply sent as a probe
        probe[:PROBE_MIN - 1],                       # valid header, too small to answer
    ]
    oversized = [probe + bytes(PROBE_MAX + 1 - len(probe)), bytes(60000)]
    replies = _exchange(address, farm.port, garbage + oversized, "127.0.0.200")
    assert replies == []
    time.sleep(0.1)
    counts = responder.counts
    assert counts["malformed"] - before.get("malformed", 0) == len(garbage)
    assert counts["oversized"] - before.get("oversized", 0) == len(oversized)

    # still answering, and never with more bytes than the probe carried
    for size in (PROBE_MIN, 300, PROBE_MAX):
        probe = encode_probe(nonce, size)
        (reply,) = _exchange(address, farm.port, [probe], "127.0.0.201")
        assert len(reply) <= len(probe)
        got_nonce, ann = decode_reply(reply)
        assert got_nonce == nonce and ann.name == name_of(address)


def test_rate_limited_per_source(farm: Farm) -> None:
    address = DISCOVERABLE[1]
    responder = _responder(farm, address)
    limited = responder.counts["rate_limited"]
    probes = [encode_probe(os.urandom(16)) for _ in range(40)]
    flood = _exchange(address, farm.port, probes, "127.0.0.210")
    burst = responder.limit.burst
    assert 1 <= len(flood) <= burst + 5  # a few tokens may come back while the flood is read
    assert responder.counts["rate_limited"] - limited == 40 - len(flood)
    # another source is not punished for the first one's flood
    assert len(_exchange(address, farm.port, probes[:1], "127.0.0.211")) == 1


async def test_lost_probes_are_retried(farm: Farm) -> None:
    """A server that ignores the first probe (as if it were lost) is found by a retry."""
    responder = _responder(farm, DISCOVERABLE[2])
    original = responder.datagram_received
    calls = 0

    def lossy(data: bytes, addr: tuple[str | int, ...]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            original(data, addr)

    responder.datagram_received = lossy  # type: ignore[method-assign]
    try:
        found = await discover([DISCOVERABLE[2]], farm.port, wait=0.3, retries=2)
    finally:
        del responder.datagram_received
    assert calls >= 2 and [f.address for f in found] == [DISCOVERABLE[2]]
    await asyncio.sleep(0)
