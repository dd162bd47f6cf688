"""Workload 5: a tree of many small files (10,000 × 4 KiB at full size), put -r and get -r.

tether against ``tar c | ssh HOST tar x`` (and the reverse), ``scp -r`` and ``rsync -a``, all
whole processes, tmpfs to tmpfs. Values are files per second; every copy is counted and removed.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.config import Context
from bench.peers import HOST, SSH_ALIAS, TetherServer
from bench.procs import BenchError, ServerProbe, run_measured
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.common import count_files, rate_sample

TREE = "tree"
Command = Callable[[Path], Sequence[str] | str]  # given a fresh destination directory


def make_tree(root: Path, files: int, size: int) -> None:
    """``files`` random files of ``size`` bytes, 100 to a directory, two levels deep."""
    for i in range(files):
        path = root / f"{i // 1000:02d}" / f"{i // 100 % 10}" / f"f{i:05d}"
        if i % 100 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def _measure(ctx: Context, name: str, command: Command, probe: ServerProbe) -> Sample:
    dest = ctx.peers.new_dir("tree-" + name.split()[0])
    try:
        m = run_measured(command(dest), ctx.log(f"tree-{name.split()[0]}"), probe=probe)
        got = count_files(dest / TREE)
        if got != ctx.sizes.tree_files:
            raise BenchError(f"{name}: {got} files arrived, expected {ctx.sizes.tree_files}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return rate_sample(m, ctx.sizes.tree_files)


def _commands(ctx: Context, src: Path, server: TetherServer, upload: bool
              ) -> list[tuple[str, Command, str]]:
    peers, sshd = ctx.peers, ctx.peers.sshd
    rel_src = os.path.relpath(src, peers.fast)
    ssh = shlex.join(sshd.ssh(SSH_ALIAS))
    tar_c, tar_x = f"tar cf - -C {src.parent} {TREE}", "tar xf - -C {dest}"
    if upload:
        return [
            ("tether", lambda d: peers.tether_cli(
                "put", "-r", *server.cli_flags(), str(src),
                f"{HOST}:{os.path.relpath(d, peers.fast)}/"), "tether put -r DIR HOST:DEST/"),
            ("tar | ssh", lambda d: f"{tar_c} | {ssh} {tar_x.format(dest=d)}",
             "tar c DIR | ssh HOST tar x -C DEST"),
            ("scp -r", lambda d: sshd.scp("-r", str(src), f"{SSH_ALIAS}:{d}/"),
             "scp -r DIR HOST:DEST/"),
            ("rsync -a", lambda d: sshd.rsync("-a", str(src), f"{SSH_ALIAS}:{d}/"),
             "rsync -a DIR HOST:DEST/"),
        ]
    return [
        ("tether", lambda d: peers.tether_cli(
            "get", "-r", *server.cli_flags(), f"{HOST}:{rel_src}", f"{d}/"),
         "tether get -r HOST:DIR DEST/"),
        ("tar | ssh", lambda d: f"{ssh} '{tar_c}' | {tar_x.format(dest=d)}",
         "ssh HOST tar c DIR | tar x -C DEST"),
        ("scp -r", lambda d: sshd.scp("-r", f"{SSH_ALIAS}:{src}", f"{d}/"),
         "scp -r HOST:DIR DEST/"),
        ("rsync -a", lambda d: sshd.rsync("-a", f"{SSH_ALIAS}:{src}", f"{d}/"),
         "rsync -a HOST:DIR DEST/"),
    ]


def _bind(ctx: Context, name: str, command: Command, probe: ServerProbe
          ) -> Callable[[], Sample]:
    return lambda: _measure(ctx, name, command, probe)


def _group(ctx: Context, src: Path, server: TetherServer, upload: bool) -> Group:
    verb = "put -r" if upload else "get -r"
    contenders = []
    for name, command, shown in _commands(ctx, src, server, upload):
        probe = server.probe if name == "tether" else ctx.peers.sshd.probe
        contenders.append(Contender(name, _bind(ctx, name, command, probe), shown,
                                    tether=name == "tether"))
    n, kib = ctx.sizes.tree_files, ctx.sizes.tree_file_bytes // 1024
    return Group(
        key=f"tree {verb.split()[0]}", title=f"{verb} a tree of {n:,} files of {kib} KiB",
        unit="files/s", better="higher", quantity="rate", contenders=contenders,
        targets=[
            Target(">= 1x `tar c | ssh HOST tar x`", "tether", ">=", 1.0, peer="tar | ssh"),
            Target(">= 3x `scp -r`", "tether", ">=", 3.0, peer="scp -r"),
        ],
    )


def run(ctx: Context) -> list[GroupResult]:
    src = ctx.peers.fast / "src" / TREE
    make_tree(src, ctx.sizes.tree_files, ctx.sizes.tree_file_bytes)
    try:
        with ctx.peers.tether_server() as server:
            return [run_group(_group(ctx, src, server, upload), ctx.sizes.rounds,
                              ctx.sizes.warmup) for upload in (True, False)]
    finally:
        shutil.rmtree(src, ignore_errors=True)
