"""The sync workload's push to 10 hosts (issue 17: "push to 10 hosts, <= 0.5x ten rsyncs run in
parallel"), whole processes, side by side in one run, on the tmpfs.

tether: one ``tether sync SRC/ @sync10:dest`` — one process, ten connections — to ten
``tether serve`` processes (127.0.0.1, a port and a root each; the inventory group names them).
rsync: ten ``rsync -a SRC/ bench:DEST_i/`` started at once from one bash, through the bench's
sshd (a fresh ssh each, as ten independent rsyncs are), timed until the last one ends (a
failure of any fails the run).

Ten server processes, not the fleet workload's one-process farm: on real hosts every
destination has its own CPU, and rsync's side here gets a process per destination (an
sshd-session and an rsync receiver each), which the scheduler spreads over both cores. One
tether process serving all ten would put every host's hashing and writing on one core, a
handicap no real fleet has; ten processes give both sides the same parallelism.

Two cases, what a CI farm does: the first push into ten empty destinations, and a re-push after
1% of the files changed (each contender's ten destinations hold the previous round's tree).
Values are wall seconds (lower is better); each sample also records CPU seconds, steadier than
wall time on a shared machine: the client's (its whole process tree: for rsync, bash, the ten
rsyncs and their ssh) and the servers' (the ten ``tether serve`` processes; sshd's sessions with
the rsync each starts).
"""

from __future__ import annotations

import contextlib
import resource
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from bench.config import Context
from bench.peers import HOST, SSH_ALIAS
from bench.procs import BenchError, run_measured
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group

HOSTS = 10
GROUP = "sync10"
ROUNDS = 3
TARGET = 0.5  # the issue's: tether's time <= 0.5x ten parallel rsyncs'


@contextlib.contextmanager
def tether_hosts(ctx: Context, roots: list[Path], name: str = "tether-sync10-client"
                 ) -> Iterator[tuple[Path, list[int]]]:
    """A ``tether serve`` per root and a client home whose inventory group ``sync10`` names
    them (h0, h1, ...); yields that home (``name``, under the bench's directory) and the
    servers' PIDs."""
    from tether.home import add_known_host
    from tether.identity import AuthorizedClient, add_authorized, generate_identity
    from tether.inventory import Host, Inventory, save

    peers = ctx.peers
    home = peers.tmp / name
    client = generate_identity(home, name)
    add_authorized(peers.server_home, AuthorizedClient(client.cert_der, client.name))
    inventory = Inventory()
    pids = []
    with contextlib.ExitStack() as stack:
        for n, root in enumerate(roots):
            root.mkdir(parents=True, exist_ok=True)
            server = stack.enter_context(peers.tether_server(root=root))
            inventory.add(Host(f"h{n}", HOST, server.port, (GROUP,)))
            add_known_host(home, HOST, server.port, peers.server_id.fingerprint)
            pids.append(server.proc.pid)
        save(inventory, home)
        yield home, pids


class Servers:
    """The server side's CPU seconds: ten ``tether serve`` processes' own, or what sshd's
    sessions used (the listener's reaped children: sshd-session and the rsync it starts)."""

    def __init__(self, pids: list[int], reaped: bool) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.reaped = reaped

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            t = proc.cpu_times()
            total += (t.children_user + t.children_system if self.reaped
                      else t.user + t.system)
        return total


def _children_cpu() -> float:
    """CPU seconds of the processes this harness reaped (a timed client and what it reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rsync_all(ctx: Context, src: Path, dests: list[Path]) -> str:
    """One bash line: every rsync in the background, then a ``wait`` per PID (so that any
    failure fails the run; a bare ``wait`` returns 0)."""
    starts = " ".join(shlex.join(ctx.peers.sshd.rsync("-a", f"{src}/", f"{SSH_ALIAS}:{dest}/"))
                      + " & pids+=($!);" for dest in dests)
    return f'pids=(); {starts} for p in "${{pids[@]}}"; do wait $p || exit 1; done'


def groups(ctx: Context, base: Path, make_tree: Callable[[Path, int], None],
           change: Callable[[list[Path], int, int], None]) -> list[GroupResult]:
    """Both cases; ``base`` (on the tmpfs) holds the source and every destination, removed
    after."""
    n = ctx.sizes.tree_files
    src = base / "src"
    make_tree(src, n)
    t_roots = [base / "tether" / f"h{i}" for i in range(HOSTS)]
    r_dests = [base / "rsync" / f"h{i}" for i in range(HOSTS)]
    (base / "rsync").mkdir()
    try:
        with tether_hosts(ctx, t_roots) as (home, pids):
            tether = [str(ctx.peers.tether), "sync", "--home", str(home), f"{src}/",
                      f"@{GROUP}:dest"]
            assert ctx.peers.sshd.proc is not None
            servers = {"tether": Servers(pids, False),
                       "rsync -a": Servers([ctx.peers.sshd.proc.pid], True)}
            rsync = rsync_all(ctx, src, r_dests)
            return _run(ctx, src, {"tether": tether, "rsync -a": rsync}, servers, t_roots,
                        r_dests, change)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(ctx: Context, src: Path, cmds: dict[str, list[str] | str],
         servers: dict[str, Servers], t_roots: list[Path], r_dests: list[Path],
         change: Callable[[list[Path], int, int], None]) -> list[GroupResult]:
    n = ctx.sizes.tree_files
    dests = {"tether": [r / "dest" for r in t_roots], "rsync -a": r_dests}

    def fresh(who: str) -> None:
        for dest in dests[who]:
            shutil.rmtree(dest, ignore_errors=True)

    paths = sorted(p for p in src.rglob("*") if p.is_file())
    runs = {"count": 0}

    def changed(who: str) -> None:
        if runs["count"] % 2 == 0:  # the start of a round: a new 1% for both contenders
            change(paths, max(1, n // 100), 1000 + runs["count"])
        runs["count"] += 1

    out = []
    for key, title, before, warmup in (
            ("first", f"first push of {n:,} files to {HOSTS} hosts, on tmpfs", fresh, 0),
            ("resync1", f"re-push to {HOSTS} hosts, 1% of {n:,} files changed, on tmpfs",
             changed, ctx.sizes.warmup)):
        group = _group(ctx, f"sync {HOSTS}hosts-{key}", title, cmds, servers, before)
        out.append(run_group(group, ctx.sizes.rounds, warmup))
        for who in dests:  # every host got the whole tree (both contenders synced last)
            _check(src, dests[who], who)
    return out


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _check(src: Path, dests: list[Path], who: str) -> None:
    """Each destination holds the source's files, sizes and mtimes (a run that skipped a host
    would otherwise look fast)."""
    want = _listing(src)
    for dest in dests:
        if _listing(dest) != want:
            raise BenchError(f"{who}: {dest} differs from the source after the push")


def _group(ctx: Context, key: str, title: str, cmds: dict[str, list[str] | str],
           servers: dict[str, Servers], before: Callable[[str], None]) -> Group:
    def bind(who: str) -> Callable[[], Sample]:
        def run() -> Sample:
            before(who)
            client, server = _children_cpu(), servers[who].cpu()
            m = run_measured(cmds[who], ctx.log(f"{key.replace(' ', '-')}-{who.split()[0]}"),
                             timeout=1800)
            time.sleep(0.2)  # for sshd to reap its sessions (their CPU is counted then)
            return Sample(m.seconds, {"client_rss_mib": m.client_mib,
                                      "client_cpu_s": _children_cpu() - client,
                                      "server_cpu_s": servers[who].cpu() - server})
        return run

    return Group(
        key=key, title=title, unit="s", better="lower", quantity="time", rounds=ROUNDS,
        contenders=[
            Contender("tether", bind("tether"), f"tether sync SRC/ @{GROUP}:dest  # "
                      f"{HOSTS} tether serve processes", tether=True),
            Contender("rsync -a", bind("rsync -a"),
                      f"{HOSTS} x rsync -a SRC/ bench:DEST_i/ &, wait each")],
        targets=[Target(f"<= {TARGET:g}x ten rsyncs run in parallel", "tether", "<=", TARGET,
                        peer="rsync -a")],
        note=f"tether: one process, {HOSTS} connections, {HOSTS} server processes; rsync: "
             f"{HOSTS} processes at once through one sshd; the client's peak RSS covers its "
             "whole process tree (for rsync: bash, ten rsyncs and their ssh)")
