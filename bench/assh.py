"""Minimal AsyncSSH clients, each run as its own process so that its time and memory are
measured like scp's or ssh's, whole process:

- ``python -m bench.assh put|get OPTIONS SRC DST``: one SFTP transfer from 127.0.0.1, with
  AsyncSSH's defaults (its pipelined, parallel block transfers);
- ``python -m bench.assh run OPTIONS HOST...``: connect to every host at once (``gather``), run
  ``true`` on each, close (the fleet workload).

OPTIONS: ``--port P --user U --key K --known-hosts F`` (no ~/.ssh config, no agent).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncssh


def connect(args: argparse.Namespace, host: str = "127.0.0.1") -> Any:
    """``asyncssh.connect`` to ``host`` with the given key and known hosts only."""
    return asyncssh.connect(host, args.port, username=args.user, client_keys=[args.key],
                            known_hosts=args.known_hosts, config=None, agent_path=None)


async def transfer(args: argparse.Namespace) -> None:
    async with connect(args) as conn, conn.start_sftp_client() as sftp:
        if args.verb == "put":
            await sftp.put(args.src, args.dst)
        else:
            await sftp.get(args.src, args.dst)


async def run_everywhere(args: argparse.Namespace) -> None:
    async def one(host: str) -> None:
        async with connect(args, host) as conn:
            await conn.run("true", check=True)

    await asyncio.gather(*(one(h) for h in args.hosts))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", type=int, required=True)
    common.add_argument("--user", required=True)
    common.add_argument("--key", required=True)
    common.add_argument("--known-hosts", required=True)
    parser = argparse.ArgumentParser(prog="python -m bench.assh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in ("put", "get"):
        sub = verbs.add_parser(verb, parents=[common], help=f"one SFTP {verb}")
        sub.add_argument("src")
        sub.add_argument("dst")
    run = verbs.add_parser("run", parents=[common], help="`true` on every host at once")
    run.add_argument("hosts", nargs="+", metavar="HOST")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    asyncio.run(run_everywhere(args) if args.verb == "run" else transfer(args))


if __name__ == "__main__":
    main()
