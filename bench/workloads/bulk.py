"""Workload 4: one large random file, put and get, source and destination on tmpfs.

Whole processes: ``tether put``/``get`` over TLS against scp, AsyncSSH SFTP (its own process)
and rsync over the private sshd; ``tether --plaintext`` against netcat (the plaintext floor);
``cp`` as the copy floor. Values are MiB/s over the wall time; each destination is checked for
its full size and removed after the run; peak RSS of both sides rides along.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import REPO, MiB
from bench.config import Context
from bench.peers import HOST, SSH_ALIAS, TetherServer
from bench.procs import (
    BenchError,
    Measured,
    PeakSampler,
    Tree,
    free_port,
    is_listening,
    reap,
    run_measured,
    tail,
    wait_until,
)
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.common import check_size, mib_per_s

NAME = "file.bin"
Transfer = Callable[[Path], Measured]  # given a fresh destination directory


@dataclass
class Setup:
    ctx: Context
    src: Path  # the source file on the tmpfs
    tls: TetherServer
    plain: TetherServer

    def rel(self, path: Path) -> str:
        """``path`` as the tether servers see it (relative to their root, the tmpfs)."""
        return os.path.relpath(path, self.ctx.peers.fast)


def make_file(path: Path, size: int) -> None:
    """``size`` random bytes at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            fh.write(chunk)
            left -= len(chunk)


def _sample(s: Setup, name: str, transfer: Transfer, dest_file: Callable[[Path], Path]) -> Sample:
    dest = s.ctx.peers.new_dir(name.replace(" ", "_"))
    try:
        m = transfer(dest)
        check_size(dest_file(dest), s.src.stat().st_size)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return mib_per_s(m, s.src.stat().st_size)


# --- the contenders' commands -------------------------------------------------------------------


def _tether(s: Setup, server: TetherServer, upload: bool) -> Transfer:
    peers = s.ctx.peers

    def transfer(dest: Path) -> Measured:
        if upload:
            argv = peers.tether_cli("put", *server.cli_flags(), str(s.src),
                                    f"{HOST}:{s.rel(dest)}/")
        else:
            argv = peers.tether_cli("get", *server.cli_flags(), f"{HOST}:{s.rel(s.src)}",
                                    str(dest / NAME))
        return run_measured(argv, s.ctx.log("bulk-tether"), probe=server.probe)

    return transfer


def _over_ssh(s: Setup, upload: bool, build: Callable[[str, str], list[str]]) -> Transfer:
    """scp and rsync: ``build(source, destination)`` with the sshd side as ``bench:PATH``."""
    sshd = s.ctx.peers.sshd

    def transfer(dest: Path) -> Measured:
        if upload:
            argv = build(str(s.src), f"{SSH_ALIAS}:{dest}/")
        else:
            argv = build(f"{SSH_ALIAS}:{s.src}", f"{dest}/")
        return run_measured(argv, s.ctx.log("bulk-ssh"), probe=sshd.probe)

    return transfer


def _asyncssh(s: Setup, upload: bool) -> Transfer:
    sshd = s.ctx.peers.sshd
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def transfer(dest: Path) -> Measured:
        argv = sshd.assh("put" if upload else "get", str(s.src), str(dest / NAME))
        return run_measured(argv, s.ctx.log("bulk-asyncssh"), probe=sshd.probe, env=env)

    return transfer


def _cp(s: Setup) -> Transfer:
    def transfer(dest: Path) -> Measured:
        return run_measured(["cp", str(s.src), f"{dest}/"], s.ctx.log("bulk-cp"))

    return transfer


def _nc(s: Setup, upload: bool) -> Transfer:
    """netcat both ends: the listener plays the server (receives a put, sends a get)."""

    def transfer(dest: Path) -> Measured:
        port = free_port()
        log = s.ctx.log("bulk-nc")
        with open(s.src, "rb") as src, open(dest / NAME, "wb") as dst, open(log, "wb") as err, \
                PeakSampler() as sampler:
            null = subprocess.DEVNULL
            server = subprocess.Popen(
                ["nc", "-d" if upload else "-N", "-l", HOST, str(port)],
                stdin=null if upload else src, stdout=dst if upload else null, stderr=err)
            wait_until(lambda: is_listening(port) or server.poll() is not None, 10, "nc -l")
            server_tree = sampler.watch(Tree(server.pid, frozenset()))
            t0 = time.perf_counter()
            client = subprocess.Popen(
                ["nc", "-N" if upload else "-d", HOST, str(port)],
                stdin=src if upload else null, stdout=null if upload else dst, stderr=err)
            client_tree = sampler.watch(Tree(client.pid, frozenset()), now=False)
            codes = [reap(client, 600), reap(server, 600)]
            seconds = time.perf_counter() - t0
        if any(codes):
            raise BenchError(f"nc failed: {tail(log)}")
        return Measured(seconds, client_tree.peak, server_tree.peak)

    return transfer


# --- groups -------------------------------------------------------------------------------------


def _contenders(s: Setup, upload: bool) -> list[Contender]:
    verb = "put" if upload else "get"
    sshd = s.ctx.peers.sshd
    scp = _over_ssh(s, upload, lambda a, b: sshd.scp(a, b))
    rsync = _over_ssh(s, upload, lambda a, b: sshd.rsync(a, b))
    table: list[tuple[str, Transfer, str]] = [
        ("tether", _tether(s, s.tls, upload),
         "tether put FILE HOST:DIR/" if upload else "tether get HOST:FILE DIR/FILE"),
        ("scp", scp, "scp FILE HOST:DIR/" if upload else "scp HOST:FILE DIR/"),
        ("asyncssh sftp", _asyncssh(s, upload), f"(await conn.start_sftp_client()).{verb}(...)"
                                                f"  # its own process"),
        ("tether --plaintext", _tether(s, s.plain, upload), f"tether {verb} --plaintext ..."),
        ("nc", _nc(s, upload), "nc -l ADDR PORT  and  nc -N ADDR PORT  (no TLS)"),
        ("rsync", rsync, "rsync FILE HOST:DIR/" if upload else "rsync HOST:FILE DIR/"),
        ("cp", _cp(s), "cp FILE DIR/  # local floor"),
    ]
    return [Contender(name, _bind(s, name, t), cmd, tether=name.startswith("tether"))
            for name, t, cmd in table]


def _bind(s: Setup, name: str, transfer: Transfer) -> Callable[[], Sample]:
    return lambda: _sample(s, name, transfer, lambda d: d / NAME)


def _targets() -> list[Target]:
    return [
        Target("tether (TLS) >= 1.5x scp", "tether", ">=", 1.5, peer="scp"),
        Target(">= 3x AsyncSSH SFTP", "tether", ">=", 3.0, peer="asyncssh sftp"),
        Target("tether --plaintext >= 0.85x nc", "tether --plaintext", ">=", 0.85, peer="nc"),
        Target("client peak RSS <= 64 MiB", "tether", "<=", 64, metric="client_rss_mib"),
        Target("server peak RSS <= 64 MiB", "tether", "<=", 64, metric="server_rss_mib"),
    ]


def run(ctx: Context) -> list[GroupResult]:
    size = ctx.sizes.file_bytes
    src = ctx.peers.fast / "src" / NAME
    make_file(src, size)
    try:
        with ctx.peers.tether_server() as tls, ctx.peers.tether_server(plaintext=True) as plain:
            s = Setup(ctx, src, tls, plain)
            results = []
            for upload in (True, False):
                verb = "put" if upload else "get"
                group = Group(
                    key=f"bulk {verb}", title=f"{verb} one {size / MiB:g} MiB random file "
                    f"(tmpfs to tmpfs)", unit="MiB/s", better="higher", quantity="throughput",
                    contenders=_contenders(s, upload), targets=_targets(),
                )
                results.append(run_group(group, ctx.sizes.rounds, ctx.sizes.warmup))
            return results
    finally:
        src.unlink(missing_ok=True)
