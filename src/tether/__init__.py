"""tether: run commands on another machine and move files to and from it, over pinned mutual TLS.

The public API is lazy so that ``import tether`` stays cheap for the one-shot CLI::

    async with tether.connect("host") as conn:
        result = await conn.run("uname -a")
"""

from __future__ import annotations

from tether.version import __version__

TYPE_CHECKING = False  # not typing's: importing typing costs every `tether run` a few ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Connection", "RunResult", "SyncConnection", "__version__", "connect", "connect_many"]

if TYPE_CHECKING:
    from tether.client.api import Connection, RunResult, connect
    from tether.client.fleet import connect_many
    from tether.client.sync import SyncConnection


def __getattr__(name: str) -> Any:
    if name in ("connect", "Connection", "RunResult"):
        from tether.client import api

        return getattr(api, name)
    if name == "connect_many":
        from tether.client.fleet import connect_many

        return connect_many
    if name == "SyncConnection":
        from tether.client.sync import SyncConnection

        return SyncConnection
    raise AttributeError(name)
