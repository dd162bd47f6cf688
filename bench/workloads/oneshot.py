"""Workload 2: one-shot CLI, the whole process: ``tether run HOST -- true`` against ``ssh HOST
true`` with a fresh connection and through a ControlMaster socket. One invocation per contender
per round; the value is its wall time.

Two references show the floor under any Python CLI: the interpreter starting and stopping
(``python -S -c pass``) and importing every module of the fast path (:data:`IMPORTS`). A
ControlMaster answers in less time than the first of them, which is why the 1x-ControlMaster
target needs a resident multiplexer, not a faster CLI. tether's sources are byte-compiled
first, as an installed package's are, so that no round pays for compiling them (an editable
install run with PYTHONDONTWRITEBYTECODE set would, every time).
"""

from __future__ import annotations

import compileall
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.config import Context
from bench.peers import HOST, SSH_ALIAS
from bench.procs import run_measured
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group

# every module the fast path loads; it leaves with os._exit, as this reference does
IMPORTS = "import tether.cli.oneshot, tether.client.blocking, tether.tls"


def _timed(ctx: Context, name: str, argv: Sequence[str]) -> Sample:
    m = run_measured(argv, ctx.log(f"oneshot-{name}"))
    return Sample(m.seconds * 1000, {"client_rss_mib": m.client_mib} if m.client_mib else {})


def _compile_tether() -> None:
    import tether

    compileall.compile_dir(str(Path(tether.__file__).parent), quiet=1)


def run(ctx: Context) -> list[GroupResult]:
    peers = ctx.peers
    _compile_tether()
    floor = [sys.executable, "-S", "-c", "pass"]
    imports = [sys.executable, "-c", f"{IMPORTS}, os; os._exit(0)"]
    with peers.tether_server() as server:
        tether = peers.tether_cli("run", "-p", str(server.port), HOST, "--", "true")
        fresh = peers.sshd.ssh(SSH_ALIAS, "true")
        master = peers.sshd.ssh(SSH_ALIAS, "true", master=True)
        group = Group(
            key="oneshot", title="one-shot CLI, whole process: run `true` remotely",
            unit="ms", better="lower", quantity="time",
            contenders=[
                Contender("tether run", lambda: _timed(ctx, "tether", tether),
                          "tether run HOST -- true", tether=True),
                Contender("ssh", lambda: _timed(ctx, "ssh", fresh), "ssh HOST true"),
                Contender("ssh ControlMaster", lambda: _timed(ctx, "master", master),
                          "ssh -o ControlPath=SOCK HOST true  # master already connected"),
                Contender("python -S (floor)", lambda: _timed(ctx, "floor", floor),
                          "python -S -c pass  # reference: the interpreter alone"),
                Contender("python import", lambda: _timed(ctx, "import", imports),
                          f"python -c '{IMPORTS}, os; os._exit(0)'  # start + imports"),
            ],
            targets=[
                Target("<= 0.25x ssh with a fresh connection", "tether run", "<=", 0.25,
                       peer="ssh"),
                Target("<= 1x ssh through a ControlMaster socket", "tether run", "<=", 1.0,
                       peer="ssh ControlMaster"),
            ],
            rounds=ctx.sizes.oneshot_rounds,
        )
        return [run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)]
