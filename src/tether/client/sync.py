"""A small synchronous facade for scripts: one background event loop per connection.

::

    with tether.SyncConnection("host") as conn:
        print(conn.run("uptime").text)
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from tether.client.api import Connection, _open
from tether.client.options import ConnectOptions, options_of
from tether.client.process import RunResult

T = TypeVar("T")


class SyncConnection:
    """A blocking wrapper around :class:`tether.client.api.Connection`."""

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        options: ConnectOptions | None = None,
        home: str | os.PathLike[str] | None = None,
        accept_new: bool | None = None,
        plaintext: bool | None = None,
        timeout: float | None = None,
        keepalive: float | None = None,
        mux: str | None = None,
        mux_persist: float | None = None,
    ) -> None:
        """The options as :func:`tether.connect`'s: an ``options`` object or its fields as
        keywords (``keepalive``: seconds; None or 0: off)."""
        opts = options_of(options, port=port, home=home, accept_new=accept_new,
                          plaintext=plaintext, timeout=timeout, keepalive=keepalive, mux=mux,
                          mux_persist=mux_persist)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tether-sync")
        self._thread.start()
        try:
            self._conn: Connection = self._call(_open(host, opts))
        except BaseException:
            self._stop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def server(self) -> Any:
        return self._conn.server

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run a command to completion; see :meth:`Connection.run`."""
        return self._call(
            self._conn.run(cmd, input=input, cwd=cwd, env=env, timeout=timeout, check=check)
        )

    def put(self, local: Any, remote: str, **kwargs: Any) -> Any:
        """Upload; see :meth:`Connection.put`."""
        return self._call(self._conn.put(local, remote, **kwargs))

    def get(self, remote: Any, local: Any, **kwargs: Any) -> Any:
        """Download; see :meth:`Connection.get`."""
        return self._call(self._conn.get(remote, local, **kwargs))

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._conn.close())
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
