"""Jump hosts (``--via A,B``, ssh's ``-J``): the connection to the last host rides forwarded
connections through the others, with TLS end to end. Each hop is a tether connection of its
own, authenticated and pinned as usual; the next one's TLS runs over a ``connect`` stream
through it, so a hop sees only the inner connection's encrypted bytes (its audit log records a
forwarded connection and its byte counts, nothing more).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tether.defaults import DEFAULT_PORT
from tether.errors import UsageError

if TYPE_CHECKING:
    from typing import Protocol

    from tether.client.forward import Connection as Carrier
    from tether.client.options import ConnectOptions

    class Connection(Carrier, Protocol):  # what a hop is of tether.client.api.Connection
        _carried: set[asyncio.Task[None]]

        async def close(self) -> None: ...

C = TypeVar("C", bound="Connection")



def inventory_via(host: str, home: Any) -> list[str]:
    """An inventory host's jump hosts (``via = [...]`` in hosts.toml), else none."""
    from tether.inventory import InventoryError, load, names_inventory_host

    try:
        if names_inventory_host(host, home):
            return list(load(home).hosts[host].via)
    except InventoryError:
        pass  # resolving the host says what is wrong, or takes an address as it is
    return []


def split_hop(hop: str) -> tuple[str, str, int | None]:
    """``[user@]HOST[:PORT]`` (``[V6]:PORT``) as (user, host, port or None)."""
    user, _, rest = hop.rpartition("@")
    port: int | None = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], hop)
    elif rest.count(":") == 1:
        host, _, text = rest.partition(":")
        port = _port(text, hop)
    else:
        host = rest
    if not host:
        raise UsageError(f"--via {hop!r}: no host")
    return user, host, port


def _port(text: str, hop: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--via {hop!r}: {text!r} is not a port number")
    return int(text)


async def tunnel(conn: Connection, host: str, port: int) -> socket.socket:
    """A socket whose bytes travel to ``host:port`` as ``conn``'s server reaches it."""
    from tether.client.forward import LIMIT, open_stream, pipe

    handle, _ = await open_stream(conn, host=host, port=port, origin="jump")
    mine, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=mine, limit=LIMIT)
    task = asyncio.create_task(pipe(handle, reader, writer))
    conn._carried.add(task)
    task.add_done_callback(_carried_ended(conn))
    return theirs


def _carried_ended(conn: Connection) -> Callable[[asyncio.Task[None]], None]:
    def ended(task: asyncio.Task[None]) -> None:
        conn._carried.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the inner connection reports its own end
    return ended


async def through(via: Sequence[str], host: str, options: ConnectOptions, user: str,
                  opener: Callable[..., Awaitable[C]], resolve: Callable[..., Any]
                  ) -> tuple[C, list[C]]:
    """Connect to each of ``via`` in turn, each through the one before, then to ``host``
    (already resolved, with ``options`` and ``user``) through the last: that connection, and
    the hops it rides (to be closed with it)."""
    carriers: list[C] = []
    try:
        conn: C | None = None
        for hop in via:
            hop_user, name, port = split_hop(hop)
            address, hop_options, hop_user = resolve(
                name, options.with_(port=port or DEFAULT_PORT), port is not None, hop_user)
            sock = None if conn is None else await tunnel(conn, address, hop_options.port)
            conn = await opener(address, hop_options, hop_user, sock)
            carriers.append(conn)
        assert conn is not None
        sock = await tunnel(conn, host, options.port)
        final = await opener(host, options, user, sock)
    except BaseException:
        for carrier in reversed(carriers):
            await carrier.close()
        raise
    return final, carriers
