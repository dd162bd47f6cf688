"""``tether serve``: create the server identity on first start, listen, log to stderr."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import click

from tether.identity import generate_identity, home_dir, load_identity


def serve_main(home: str | None, host: str, port: int, root: str | None, name: str | None,
               encoding: str | None, plaintext: bool, kill_grace: float) -> None:
    from tether.server.listener import Server, ServerConfig

    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("TETHER_DEBUG") else logging.INFO,
        format="%(asctime)s tether %(levelname)s %(message)s", stream=sys.stderr,
    )
    h = home_dir(home)
    config = ServerConfig(home=h, host=host, port=port, plaintext=plaintext,
                          kill_grace=kill_grace)
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
        await server.serve_forever()
        click.echo("tether serve: stopped", err=True)

    asyncio.run(main())
