"""Port forwarding on a connection — ssh's ``-L``, ``-R``, ``-D`` and a stream to one
destination — as the methods :class:`tether.client.api.Connection` inherits. The work is in
:mod:`tether.client.forward`, imported only when a forward starts (start-up time counts)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from tether.client.forward import Forwarder
    from tether.client.process import StreamHandle
    from tether.net.framed import FramedConnection
    from tether.protocol import Message


class Forwarding:
    """The forwarding half of the API (what :mod:`tether.client.forward` needs of a
    connection: its framed link and :meth:`open_stream`, which Connection has)."""

    if TYPE_CHECKING:
        _framed: FramedConnection

        def open_stream(self, opener: type[Message], **fields: Any) -> StreamHandle: ...

    async def forward_local(self, listen_port: int, dest_host: str = "", dest_port: int = 0, *,
                            listen_host: str = "127.0.0.1", listen_path: str = "",
                            dest_path: str = "", report: Callable[[str], None] | None = None
                            ) -> Forwarder:
        """ssh ``-L``: listen here (``listen_port`` 0: any free port, see ``.port``); each
        connection goes to ``dest_host:dest_port`` (or ``dest_path``) as the server sees it.
        ``report`` hears one line per failed connection. Close the result to stop."""
        from tether.client import forward

        return await forward.forward_local(self, listen_host, listen_port, dest_host,
                                           dest_port, listen_path=listen_path,
                                           dest_path=dest_path, report=report)

    async def forward_remote(self, listen_port: int, dest_host: str = "", dest_port: int = 0,
                             *, listen_host: str = "", listen_path: str = "",
                             dest_path: str = "", report: Callable[[str], None] | None = None
                             ) -> Forwarder:
        """ssh ``-R``: listen on the server (loopback unless it allows more; ``listen_port``
        0: the server chooses, see ``.port``); each connection comes back to
        ``dest_host:dest_port`` (or ``dest_path``) as this machine sees it."""
        from tether.client import forward

        return await forward.forward_remote(self, listen_host, listen_port, dest_host,
                                            dest_port, listen_path=listen_path,
                                            dest_path=dest_path, report=report)

    async def forward_socks(self, listen_port: int, *, listen_host: str = "127.0.0.1",
                            listen_path: str = "", report: Callable[[str], None] | None = None
                            ) -> Forwarder:
        """ssh ``-D``: a SOCKS5 proxy here; connections leave from the server, which resolves
        the names."""
        from tether.client import forward

        return await forward.forward_socks(self, listen_host, listen_port,
                                           listen_path=listen_path, report=report)

    async def open_connection(self, host: str = "", port: int = 0, *, path: str = ""
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream pair to ``host:port`` (or the Unix socket ``path``) as the server sees
        it, like :func:`asyncio.open_connection`; a refusal raises RemoteError."""
        from tether.client import forward

        return await forward.open_connection(self, host, port, path=path)
