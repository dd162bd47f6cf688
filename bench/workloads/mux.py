"""Workload 9: the one-shot CLI through ``tether mux`` (issue 21): ``tether run --mux auto HOST --
true`` with the mux already holding the connection, against ``ssh`` through a ControlMaster,
a fresh ``ssh``, and the direct ``tether run`` (a TLS handshake per invocation). One invocation
per contender per round; the value is its wall time.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from bench.config import Context
from bench.peers import HOST, SSH_ALIAS
from bench.procs import BenchError, run_measured
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.oneshot import _compile_tether


def _timed(ctx: Context, name: str, argv: Sequence[str]) -> Sample:
    m = run_measured(argv, ctx.log(f"mux-{name}"))
    return Sample(m.seconds * 1000, {"client_rss_mib": m.client_mib} if m.client_mib else {})


def run(ctx: Context) -> list[GroupResult]:
    peers = ctx.peers
    _compile_tether()
    with peers.tether_server() as server:
        muxed = peers.tether_cli("run", "--mux", "auto", "-p", str(server.port), HOST, "--",
                                 "true")
        direct = peers.tether_cli("run", "--mux", "no", "-p", str(server.port), HOST, "--",
                                  "true")
        fresh = peers.sshd.ssh(SSH_ALIAS, "true")
        master = peers.sshd.ssh(SSH_ALIAS, "true", master=True)
        warm = subprocess.run(muxed, capture_output=True, timeout=60)  # starts the mux
        if warm.returncode != 0:
            raise BenchError(f"tether run --mux auto failed: {warm.stderr.decode()[-600:]}")
        try:
            group = Group(
                key="mux", title="one-shot CLI through the mux: run `true` remotely",
                unit="ms", better="lower", quantity="time",
                contenders=[
                    Contender("tether run --mux", lambda: _timed(ctx, "tether", muxed),
                              "tether run --mux auto HOST -- true  # mux already connected",
                              tether=True),
                    Contender("ssh ControlMaster", lambda: _timed(ctx, "master", master),
                              "ssh -o ControlPath=SOCK HOST true  # master already connected"),
                    Contender("ssh", lambda: _timed(ctx, "ssh", fresh), "ssh HOST true"),
                    Contender("tether run", lambda: _timed(ctx, "direct", direct),
                              "tether run --mux no HOST -- true  # a handshake each time"),
                ],
                targets=[
                    Target("<= 1.5x ssh through a ControlMaster", "tether run --mux", "<=", 1.5,
                           peer="ssh ControlMaster"),
                    Target("<= 0.15x a fresh ssh", "tether run --mux", "<=", 0.15, peer="ssh"),
                ],
                rounds=ctx.sizes.oneshot_rounds,
            )
            return [run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)]
        finally:
            subprocess.run(peers.tether_cli("mux", "stop"), capture_output=True, timeout=30)
