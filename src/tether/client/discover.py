"""Finding tether servers with UDP probes: one datagram per address, lost ones sent again.

``await discover(["10.0.0.0/24"], port)`` sends a padded probe (``tether.protocol.discovery``)
with a fresh nonce to every address, waits, re-sends to the silent ones up to ``retries`` times,
and returns what answered. A reply counts only if it comes from an address we probed and echoes
the nonce we sent there, so stray or spoofed datagrams from elsewhere are ignored; a network is
capped at :data:`MAX_ADDRESSES` (a /16), because a probe to every address of a /8 is a scan,
not a discovery.

No printing here: :mod:`tether.cli.discover` shows the result and adds it to the inventory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from tether.errors import BadRequest
from tether.protocol.discovery import (
    NONCE_SIZE,
    PROBE_MIN,
    Announcement,
    DatagramError,
    decode_reply,
    encode_probe,
)

MAX_ADDRESSES = 65536
RETRIES = 2
WAIT = 0.5  # seconds to wait for answers after each round of probes
BATCH = 256  # probes sent before yielding to the loop (and to the replies)


@dataclass(frozen=True)
class Found:
    """A server that answered: where it answered from, and what it says about itself."""

    address: str
    port: int
    name: str
    fingerprint: str
    version: str
    announced: str  # the address the server says it listens on (may be 0.0.0.0)


def expand(specs: Iterable[str], limit: int = MAX_ADDRESSES) -> list[str]:
    """Addresses from CIDRs (``10.0.0.0/24``: its hosts), IP addresses and host names."""
    out: dict[str, None] = {}
    for spec in specs:
        for address in _expand_one(spec, limit):
            out[address] = None
            if len(out) > limit:
                raise BadRequest(f"more than {limit} addresses to probe; narrow the ranges")
    return list(out)


def _expand_one(spec: str, limit: int) -> list[str]:
    if "/" in spec:
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError as exc:
            raise BadRequest(f"{spec!r} is not a network: {exc}") from exc
        if net.num_addresses > limit:
            raise BadRequest(f"{spec} has {net.num_addresses} addresses; the limit is {limit} "
                             f"(a /16 for IPv4)")
        return [str(a) for a in net.hosts()] or [str(net.network_address)]
    try:
        return [str(ipaddress.ip_address(spec.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(spec, None, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise BadRequest(f"cannot resolve {spec!r}: {exc.strerror}") from exc
    return [str(infos[0][4][0])]


class _Prober(asyncio.DatagramProtocol):
    """Collects the replies that match an outstanding probe."""

    def __init__(self, nonces: dict[str, bytes]) -> None:
        self.nonces = nonces
        self.found: dict[str, Found] = {}
        self.ignored = 0
        self.all_found = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = str(addr[0])
        try:
            nonce, ann = decode_reply(data)
        except DatagramError:
            self.ignored += 1
            return
        if self.nonces.get(source) != nonce or source in self.found:
            self.ignored += 1
            return
        self.found[source] = _found(source, ann)
        if len(self.found) == len(self.nonces):
            self.all_found.set()

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP "port unreachable" for one address says nothing about the others


def _found(source: str, ann: Announcement) -> Found:
    return Found(source, ann.port, ann.name, ann.fingerprint, ann.version, ann.address)


async def discover(targets: Iterable[str], port: int, *, retries: int = RETRIES,
                   wait: float = WAIT, probe_size: int = PROBE_MIN) -> list[Found]:
    """Probe every address (see :func:`expand`) on UDP ``port``; the servers that answered,
    in the order of the addresses probed."""
    addresses = expand(targets)
    families: dict[int, list[str]] = {}
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        families.setdefault(family, []).append(address)
    results = await asyncio.gather(*(
        _probe_family(family, group, port, retries, wait, probe_size)
        for family, group in families.items()
    ))
    found = {f.address: f for part in results for f in part}
    return [found[a] for a in addresses if a in found]


async def _probe_family(family: int, addresses: list[str], port: int, retries: int,
                        wait: float, probe_size: int) -> list[Found]:
    loop = asyncio.get_running_loop()
    nonces = {a: os.urandom(NONCE_SIZE) for a in addresses}
    transport, prober = await loop.create_datagram_endpoint(
        lambda: _Prober(nonces), family=family)
    try:
        for _round in range(1 + max(0, retries)):
            silent = [a for a in addresses if a not in prober.found]
            if not silent:
                break
            for i, address in enumerate(silent, 1):
                transport.sendto(encode_probe(nonces[address], probe_size), (address, port))
                if i % BATCH == 0:
                    await asyncio.sleep(0.001)  # let the socket drain and replies in
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(prober.all_found.wait(), wait)
    finally:
        transport.close()
    return list(prober.found.values())


__all__ = ["MAX_ADDRESSES", "Found", "discover", "expand"]
