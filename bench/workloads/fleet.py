"""Workload 7: one command on many hosts, whole process (50 hosts at full size):
``tether run @all -- true`` against what people do with ssh — a shell loop, the same loop in the
background with ``wait``, and an AsyncSSH ``gather`` (``python -m bench.assh run``).

Every host is a loopback address from 127.0.0.2 on, with a tether server (all of them in one
process, ``python -m bench.farm``) and an sshd (one per 16 addresses, sshd's limit, with the main
sshd's keys and session settings); the client's inventory names the hosts, all in ``@all``. One
invocation per contender per round; the value is its wall time.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import REPO
from bench.config import Context
from bench.peers import SSHD_MAX_LISTEN, Peers, Sshd
from bench.procs import BenchError, all_listening, free_port, run_measured, stop, tail, wait_until
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group

FIRST = 2  # the first host is 127.0.0.2 (127.0.0.1 is the other workloads')
TARGET_SECONDS = 1.0  # the issue's: `tether run @all -- true` over 50 hosts


def addresses(n: int) -> list[str]:
    """``n`` loopback addresses from 127.0.0.2 on."""
    if not 1 <= n <= 254 - FIRST:
        raise BenchError(f"the fleet workload takes 1 to {254 - FIRST} hosts, not {n}")
    return [f"127.0.0.{i}" for i in range(FIRST, FIRST + n)]


def _env() -> dict[str, str]:
    """For ``python -m bench.*`` helpers: the repository on the path."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


@contextlib.contextmanager
def tether_farm(peers: Peers, hosts: Sequence[str],
                name: str = "tether-fleet-client") -> Iterator[Path]:
    """tether servers on every host (one process, the peers' server identity) and a client home
    of their own (``name``, one per workload) whose inventory names them all; yields it."""
    from tether.identity import AuthorizedClient, add_authorized, add_known_host, generate_identity
    from tether.inventory import Host, Inventory, save

    home = peers.tmp / name
    client = generate_identity(home, name)
    add_authorized(peers.server_home, AuthorizedClient(client.cert_der, client.name))
    port = free_port(hosts[0])
    inventory = Inventory()
    for host in hosts:
        inventory.add(Host("h" + host.rsplit(".", 1)[1], host, port))
        add_known_host(home, host, port, peers.server_id.fingerprint)
    save(inventory, home)
    log = peers.tmp / "farm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench.farm", str(peers.server_home),
                                 str(peers.fast), str(port), *hosts],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env())
    try:
        wait_until(lambda: all_listening(hosts, port) or proc.poll() is not None, 60,
                   "the tether farm")
        if proc.poll() is not None:
            raise BenchError(f"the tether farm exited: {tail(log)}")
        yield home
    finally:
        stop(proc)


@contextlib.contextmanager
def sshd_fleet(sshd: Sshd, hosts: Sequence[str]) -> Iterator[int]:
    """sshd on every host (one per 16 addresses), their host key pinned; yields the port."""
    port = free_port(hosts[0])
    sshd.trust(hosts, port)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for part, first in enumerate(range(0, len(hosts), SSHD_MAX_LISTEN)):
            started.append(sshd.launch(f"sshd-fleet{part}", hosts[first:first + SSHD_MAX_LISTEN],
                                       port))
        yield port
    finally:
        for proc in started:
            stop(proc)


def _timed(ctx: Context, name: str, cmd: Sequence[str] | str,
           env: dict[str, str] | None = None) -> Sample:
    m = run_measured(cmd, ctx.log(f"fleet-{name}"), env=env, timeout=300)
    return Sample(m.seconds, {"client_rss_mib": m.client_mib} if m.client_mib else {})


def _contenders(ctx: Context, home: Path, hosts: Sequence[str], port: int) -> list[Contender]:
    sshd = ctx.peers.sshd
    ssh = shlex.join(sshd.ssh("-p", str(port)))
    each = f"for h in {' '.join(hosts)}; do"
    tether = [str(ctx.peers.tether), "run", "--home", str(home), "@all", "--", "true"]
    # `wait PID` for each, so that one failed ssh fails the run (a bare `wait` returns 0)
    background = (f"pids=(); {each} {ssh} $h true & pids+=($!); done; "
                  f'for p in "${{pids[@]}}"; do wait $p || exit 1; done')
    assh = sshd.assh("run", *hosts, port=port)
    return [
        Contender("tether run @all", lambda: _timed(ctx, "tether", tether),
                  "tether run @all -- true", tether=True),
        Contender("ssh loop", lambda: _timed(ctx, "loop", f"{each} {ssh} $h true || exit 1; done"),
                  "for h in HOSTS; do ssh $h true; done"),
        Contender("ssh loop &, wait", lambda: _timed(ctx, "background", background),
                  "for h in HOSTS; do ssh $h true & done; wait"),
        Contender("asyncssh gather", lambda: _timed(ctx, "asyncssh", assh, _env()),
                  "python -m bench.assh run HOSTS  # gather(connect, run true)"),
    ]


def run(ctx: Context) -> list[GroupResult]:
    hosts = addresses(ctx.sizes.fleet_hosts)
    with tether_farm(ctx.peers, hosts) as home, sshd_fleet(ctx.peers.sshd, hosts) as port:
        group = Group(
            key="fleet", title=f"`true` on {len(hosts)} hosts at once, whole process",
            unit="s", better="lower", quantity="time",
            contenders=_contenders(ctx, home, hosts, port),
            targets=[Target(f"`tether run @all -- true` over {len(hosts)} hosts <= 1 s wall "
                            "(issue: 50 hosts)", "tether run @all", "<=", TARGET_SECONDS)],
        )
        return [run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)]
