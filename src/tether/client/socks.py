"""The server half of a SOCKS5 handshake (RFC 1928), as ``tether forward -D`` answers it: no
authentication, ``CONNECT`` only, IPv4, IPv6 or a domain name (which the tether server resolves:
``curl --socks5-hostname``). Written here rather than taken from a library: it is forty lines
of the RFC and no maintained package offers only the server side of it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable

from tether.errors import PermissionDenied, TetherError

VERSION = 5
NO_AUTH, NO_METHOD = 0, 0xFF
CONNECT = 1
IPV4, DOMAIN, IPV6 = 1, 3, 4
# replies
SUCCEEDED, FAILURE, NOT_ALLOWED, HOST_UNREACHABLE, REFUSED, NOT_SUPPORTED, BAD_ADDRESS = (
    0, 1, 2, 4, 5, 7, 8)

Answer = Callable[[TetherError | None], Awaitable[None]]


def _reply(code: int) -> bytes:
    return bytes([VERSION, code, 0, IPV4, 0, 0, 0, 0, 0, 0])


def reply_code(error: TetherError | None) -> int:
    """The SOCKS reply for how the server's connect ended."""
    if error is None:
        return SUCCEEDED
    if isinstance(error, PermissionDenied):
        return NOT_ALLOWED
    text = str(error).lower()
    if "refused" in text:
        return REFUSED
    if "resolve" in text or "unreachable" in text or "no answer" in text:
        return HOST_UNREACHABLE
    return FAILURE


async def socks_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> tuple[str, int, Answer]:
    """Read a client's greeting and request; the destination and a function that sends the
    reply (success, or the reply code for an error). ValueError says what was wrong."""
    version, count = await reader.readexactly(2)
    if version != VERSION:
        raise ValueError(f"not a SOCKS5 client (version byte {version})")
    methods = await reader.readexactly(count)
    if NO_AUTH not in methods:
        writer.write(bytes([VERSION, NO_METHOD]))
        raise ValueError("the SOCKS client offers no method without authentication")
    writer.write(bytes([VERSION, NO_AUTH]))
    version, command, _, kind = await reader.readexactly(4)
    if kind == IPV4:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif kind == IPV6:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif kind == DOMAIN:
        size = (await reader.readexactly(1))[0]
        host = (await reader.readexactly(size)).decode("ascii")  # IDNA is already ASCII
    else:
        writer.write(_reply(BAD_ADDRESS))
        raise ValueError(f"unknown SOCKS address type {kind}")
    port = int.from_bytes(await reader.readexactly(2), "big")
    if version != VERSION or command != CONNECT:
        writer.write(_reply(NOT_SUPPORTED))
        raise ValueError(f"only SOCKS5 CONNECT is supported (command {command})")

    async def answer(error: TetherError | None) -> None:
        writer.write(_reply(reply_code(error)))
        await writer.drain()

    return host, port, answer
