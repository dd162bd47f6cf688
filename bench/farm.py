"""Many tether servers in one process, the fleet workload's hosts:
``python -m bench.farm HOME ROOT PORT ADDRESS...`` serves with HOME's server identity on PORT of
every ADDRESS (one asyncio loop, commands run under ROOT) until SIGTERM.

One process rather than 50 ``tether serve``: it spares a 2-core machine 50 interpreters, and it
is the hard case for tether — every TLS handshake of ``tether run @all`` lands on one core,
where each sshd connection gets a process of its own.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path


async def serve(home: Path, root: Path, port: int, hosts: list[str]) -> None:
    from tether.identity import load_identity
    from tether.server.listener import Server, ServerConfig

    identity = load_identity(home, "server")
    servers = []
    try:
        for host in hosts:
            server = Server(ServerConfig(home=home, host=host, port=port, root=root, name=host),
                            identity)
            await server.start()
            servers.append(server)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        print(f"serving {len(servers)} addresses on port {port}", flush=True)
        await stopped.wait()
    finally:
        await asyncio.gather(*(s.close() for s in servers))


def main(argv: list[str]) -> None:
    if len(argv) < 4 or not argv[2].isdigit():
        raise SystemExit("usage: python -m bench.farm HOME ROOT PORT ADDRESS...")
    asyncio.run(serve(Path(argv[0]), Path(argv[1]), int(argv[2]), argv[3:]))


if __name__ == "__main__":
    main(sys.argv[1:])
