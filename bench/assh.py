"""A minimal AsyncSSH SFTP client, run as its own process so that its time and memory are
measured like scp's: ``python -m bench.assh put|get --port P --user U --key K --known-hosts F
SRC DST``. It uses AsyncSSH's defaults (its pipelined, parallel block transfers)."""

from __future__ import annotations

import argparse
import asyncio

import asyncssh


async def transfer(args: argparse.Namespace) -> None:
    async with asyncssh.connect(
        "127.0.0.1", args.port, username=args.user, client_keys=[args.key],
        known_hosts=args.known_hosts, config=None, agent_path=None,
    ) as conn, conn.start_sftp_client() as sftp:
        if args.direction == "put":
            await sftp.put(args.src, args.dst)
        else:
            await sftp.get(args.src, args.dst)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.assh", description=__doc__)
    parser.add_argument("direction", choices=["put", "get"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("src")
    parser.add_argument("dst")
    asyncio.run(transfer(parser.parse_args()))


if __name__ == "__main__":
    main()
