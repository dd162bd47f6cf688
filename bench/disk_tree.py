"""First sync and first ``put -r`` of the sync workload's tree (10,000 files of 100 B-64 KiB,
~320 MB) into an ext4 directory, side by side with ``rsync -a`` over the bench's sshd, and
optionally with another tether tree (``--base SRC``: e.g. main's ``src`` before a change, served
and run from there), alternating the order each round (issue 17, "Durable without rsync's cost").

    python -m bench.disk_tree [--rounds N] [--base [NAME=]DIR ...] [--only sync|put]

The destination of each run is a new directory (removed two runs later): ext4 passes over inodes
freed in the last ~30 s one by one, so writing right after removing a tree costs both contenders
more, and more unevenly, than writing itself. Values are wall seconds of whole processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.config import FULL, Context
from bench.peers import HOST, SSH_ALIAS, Peers, TetherServer
from bench.procs import BenchError, stop
from bench.workloads.sync import make_tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=FULL.tree_files)
    ap.add_argument("--base", action="append", default=[], metavar="[NAME=]DIR",
                    help="another tether source tree (its src directory), run beside this one")
    ap.add_argument("--only", choices=["sync", "put"])
    args = ap.parse_args()
    envs = {"tether": dict(os.environ)}
    for base in args.base:
        name, _, path = base.rpartition("=")
        envs[f"tether {name or 'base'}"] = dict(os.environ,
                                                PYTHONPATH=str(Path(path).resolve()))
    with Peers(64 * 1024 * 1024) as peers:
        ctx = Context(peers, FULL)
        disk = peers.tmp / "disk"
        src = disk / "src"
        make_tree(src, args.files)
        servers = {who: peers.start_tether(False, peers.fast, env) for who, env in envs.items()}
        try:
            ops = ["sync", "put"] if args.only is None else [args.only]
            for op in ops:
                run_op(ctx, op, disk, src, servers, envs, args.rounds)
        finally:
            for server in servers.values():
                stop(server.proc)


def run_op(ctx: Context, op: str, disk: Path, src: Path, servers: dict[str, TetherServer],
           envs: dict[str, dict[str, str]], rounds: int) -> None:
    peers = ctx.peers
    who_all = [*servers, "rsync -a"]
    times: dict[str, list[float]] = {who: [] for who in who_all}
    made: list[Path] = []
    for n in range(rounds):
        order = who_all[n % len(who_all):] + who_all[:n % len(who_all)]
        for who in order:
            dest = disk / f"{op}-{who.replace(' ', '-')}-{n}"
            if who == "rsync -a":
                cmd = peers.sshd.rsync("-a", f"{src}/", f"{SSH_ALIAS}:{dest}/")
                env = None
            else:
                server = servers[who]
                if op == "sync":
                    cmd = peers.tether_cli("sync", *server.cli_flags(), f"{src}/",
                                           f"{HOST}:{dest}")
                else:  # into DEST/src, as rsync -a SRC/ DEST/ would be into DEST
                    dest.mkdir()
                    cmd = peers.tether_cli("put", "-r", *server.cli_flags(), str(src),
                                           f"{HOST}:{dest}/")
                env = envs[who]
            started = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            seconds = time.perf_counter() - started
            if out.returncode:
                raise BenchError(f"{who} {op}: {out.stderr.strip()[-500:]}")
            times[who].append(seconds)
            print(f"  {op:4} round {n + 1}/{rounds}  {who:12} {seconds:7.2f} s  "
                  f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
            made.append(dest)
            while len(made) > 2 * len(who_all):
                shutil.rmtree(made.pop(0), ignore_errors=True)
    rsync = statistics.median(times["rsync -a"])
    print(f"{op}: first {op} of {len(list(src.rglob('*')))} entries on ext4, median of {rounds} "
          f"(min):")
    for who in who_all:
        med = statistics.median(times[who])
        print(f"  {who:12} {med:6.2f} s ({min(times[who]):.2f})  ÷ rsync {med / rsync:.2f}")
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
