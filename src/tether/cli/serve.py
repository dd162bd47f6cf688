"""``tether serve``: create the server identity on first start, listen, log to stderr."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tether.identity import generate_identity, home_dir, load_identity

if TYPE_CHECKING:
    from tether.server.classic import ClassicConfig, ClassicServer
    from tether.server.limits import Limits


def serve_main(home: str | None, host: str, port: int, root: str | None, name: str | None,
               encoding: str | None, plaintext: bool, kill_grace: float,
               classic_port: int | None = None, classic_host: str | None = None,
               classic_unsafe: bool = False, audit: str | None = None,
               limits: Limits | None = None, discoverable: bool = False) -> None:
    from tether.server.limits import Limits
    from tether.server.listener import Server, ServerConfig

    classic = _classic_config(host, port, classic_port, classic_host, classic_unsafe)

    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("TETHER_DEBUG") else logging.INFO,
        format="%(asctime)s tether %(levelname)s %(message)s", stream=sys.stderr,
    )
    h = home_dir(home)
    config = ServerConfig(home=h, host=host, port=port, plaintext=plaintext,
                          kill_grace=kill_grace, classic=classic,
                          audit=Path(audit) if audit else None, limits=limits or Limits(),
                          discoverable=discoverable)
    if root:
        config.root = Path(root).resolve()
    if name:
        config.name = name
    if encoding:
        config.encoding = encoding
    identity = None
    if not plaintext:
        if not (h / "server_key.pem").exists():
            identity = generate_identity(h, name or socket.gethostname(), "server")
            click.echo(f"created server identity in {h}", err=True)
        else:
            identity = load_identity(h, "server")

    async def main() -> None:
        server = Server(config, identity)
        await server.start()
        where = f"{config.host}:{server.port}"
        if identity is not None:
            click.echo(f"tether serve: listening on {where}, fingerprint {identity.fingerprint}",
                       err=True)
        else:
            click.echo(f"tether serve: listening on {where} in PLAINTEXT (no TLS, no "
                       f"authentication)", err=True)
        if server.classic is not None:
            click.echo(f"tether serve: classic protocol on {_classic_where(server.classic)} "
                       f"(no TLS, no authentication)", err=True)
        if server.discovery is not None:
            click.echo(f"tether serve: answering discovery probes on UDP {where}", err=True)
        await server.serve_forever()
        click.echo("tether serve: stopped", err=True)

    _default_signals()
    _tune_asyncio()
    asyncio.run(main())


def _default_signals() -> None:
    """Commands inherit ignored signals: a server started in the background of a script has
    SIGQUIT (and maybe SIGCHLD) ignored, which its users' shells and jobs must not. SIGHUP is
    left alone (``nohup tether serve`` is deliberate)."""
    import signal

    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


def _tune_asyncio() -> None:
    """Two measured settings for a long-running server (docs/benchmarks.md):

    - a pidfd child watcher (Linux, Python < 3.12, where the default starts a thread per
      child): ~12% less CPU per command;
    - a 64 KiB TLS read buffer instead of asyncio's 256 KiB per connection: 1,000 idle
      connections take ~125 MiB instead of ~314 MiB, bulk throughput unchanged within noise.
      ``SSLProtocol.max_size`` is an undocumented class attribute, so this is a stopgap until
      the bulk path has a transport of its own.
    """
    import asyncio.sslproto
    import contextlib
    import warnings

    if sys.platform == "linux" and sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        with warnings.catch_warnings(), contextlib.suppress(OSError, AttributeError):
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    if hasattr(asyncio.sslproto.SSLProtocol, "max_size"):
        asyncio.sslproto.SSLProtocol.max_size = 64 * 1024


def _classic_config(host: str, port: int, classic_port: int | None, classic_host: str | None,
                    unsafe: bool) -> ClassicConfig | None:
    """The classic listener's config, or a one-line error and exit status 1."""
    from tether.errors import TetherError
    from tether.server.classic import classic_config

    try:
        if classic_port is None:
            if classic_host is not None:
                raise TetherError("--classic-host needs --classic-port")
            return None
        return classic_config(host, port, classic_port, classic_host, unsafe)
    except TetherError as exc:
        click.echo(f"tether: {exc}", err=True)
        sys.exit(1)


def _classic_where(classic: ClassicServer) -> str:
    host = classic.config.host
    return f"[{host}]:{classic.port}" if ":" in host else f"{host}:{classic.port}"
