"""Workload wan: long fat networks, through the latency proxy (:mod:`bench.wanproxy`).

A put, a get and a stdout stream of ``wan_bytes`` through the proxy at each round trip of
``wan_rtts`` (0 ms is the base: the same proxy, no delay), and scp and ssh through the same
proxy at ``wan_peer_rtts``. Every contender of a group runs in every round, alternately, so the
ratios come from one run on one machine load: tether at R ms ÷ tether at 0 ms says what flow
control costs at that round trip, tether ÷ scp (ssh) at R ms the comparison. scp and ssh move
``wan_peer_bytes``: their rate is bound by their windows (about 2 MiB per channel ÷ RTT), so a
GiB would take minutes at 150 ms for the same MiB/s. Peak RSS of the client and the server ride
along; the proxy's own memory is not counted (it holds what is in flight on the "wire").

The last group is the time to a first result: ``tether run HOST -- true`` (and ``ssh HOST
true``) at the proxy's largest round trip up to 50 ms, minus the same at 0 ms (the fastest of
five runs each), in round trips: what the connection, the handshakes and the request cost
beyond the processes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench import REPO, MiB
from bench.config import Context
from bench.peers import HOST, SSH_ALIAS, TetherServer
from bench.procs import BenchError, run_measured, stop
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.bulk import make_file
from bench.workloads.common import check_size, mib_per_s

NAME = "wan.bin"
PEER_NAME = "wan-peer.bin"
RSS_LIMIT = 128  # MiB per side at the largest round trip
FIRST_TRIES = 5  # runs at each round trip per first-result sample (the fastest counts)


@dataclass
class Setup:
    ctx: Context
    src: Path  # tether's source file (wan_bytes)
    peer_src: Path  # scp's and ssh's (wan_peer_bytes)
    server: TetherServer
    tether_ports: dict[int, int]  # RTT ms -> the proxy port in front of tether serve
    ssh_ports: dict[int, int]  # RTT ms -> the proxy port in front of sshd

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.ctx.peers.fast))


@contextlib.contextmanager
def proxy(ctx: Context, routes: list[tuple[int, int]]) -> Iterator[dict[tuple[int, int], int]]:
    """One proxy process for every (target port, RTT ms) route; yields route -> listening port."""
    argv = [sys.executable, "-m", "bench.wanproxy", *(f"{t}:{r}" for t, r in routes)]
    log = open(ctx.log("wanproxy"), "wb")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ports: dict[tuple[int, int], int] = {}
        for raw in proc.stdout:
            line = raw.decode()
            if line.strip() == "ready":
                break
            route, port = line.split()
            target, rtt = route.split(":")
            ports[(int(target), int(float(rtt)))] = int(port)
        if len(ports) != len(routes):
            raise BenchError(f"the latency proxy did not start (see {ctx.log('wanproxy')})")
        yield ports
    finally:
        stop(proc)
        log.close()


def _trust_ports(s: Setup) -> None:
    """The tether client and ssh know the servers' keys at the proxy's ports too."""
    from tether.identity import add_known_host

    peers = s.ctx.peers
    for port in s.tether_ports.values():
        add_known_host(peers.client_home, HOST, port, peers.server_id.fingerprint)
    for port in s.ssh_ports.values():
        peers.sshd.trust([HOST], port)


# --- runs ---------------------------------------------------------------------------------------


def _fresh(s: Setup, tag: str) -> Path:
    return s.ctx.peers.new_dir(f"wan-{tag}")


def _transfer(s: Setup, upload: bool, tether: bool, rtt: int) -> Sample:
    """One put or get: tether's of ``src`` or scp's of ``peer_src``, through the proxy."""
    peers = s.ctx.peers
    src = s.src if tether else s.peer_src
    dest = _fresh(s, "put" if upload else "get")
    try:
        if tether:
            port = str(s.tether_ports[rtt])
            argv = (peers.tether_cli("put", "-p", port, str(src), f"{HOST}:{s.rel(dest)}/")
                    if upload else
                    peers.tether_cli("get", "-p", port, f"{HOST}:{s.rel(src)}",
                                     str(dest / src.name)))
            m = run_measured(argv, s.ctx.log("wan-tether"), probe=s.server.probe)
        else:
            opts = ["-o", f"Port={s.ssh_ports[rtt]}"]
            argv = (peers.sshd.scp(*opts, str(src), f"{SSH_ALIAS}:{dest}/") if upload else
                    peers.sshd.scp(*opts, f"{SSH_ALIAS}:{src}", f"{dest}/"))
            m = run_measured(argv, s.ctx.log("wan-scp"), probe=peers.sshd.probe)
        check_size(dest / src.name, src.stat().st_size)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return mib_per_s(m, src.stat().st_size)


def _stream(s: Setup, tether: bool, rtt: int) -> Sample:
    peers = s.ctx.peers
    size = s.ctx.sizes.wan_bytes if tether else s.ctx.sizes.wan_peer_bytes
    command = f"head -c {size} /dev/zero"
    if tether:
        argv = peers.tether_cli("run", "-p", str(s.tether_ports[rtt]), HOST, "--", command)
        m = run_measured(argv, s.ctx.log("wan-stream-tether"), probe=s.server.probe)
    else:
        argv = peers.sshd.ssh("-o", f"Port={s.ssh_ports[rtt]}", SSH_ALIAS, command)
        m = run_measured(argv, s.ctx.log("wan-stream-ssh"), probe=peers.sshd.probe)
    return mib_per_s(m, size)


def _first_result(s: Setup, tether: bool, rtt: int) -> Sample:
    """``true`` at ``rtt`` minus ``true`` at 0 ms, in round trips of ``rtt``: the fastest of
    ``FIRST_TRIES`` runs each, alternately (a process's start varies by more than a round trip
    on a loaded machine; the fastest run is the one nothing else got in the way of)."""
    peers = s.ctx.peers

    def once(at: int) -> float:
        if tether:
            argv = peers.tether_cli("run", "-p", str(s.tether_ports[at]), HOST, "--", "true")
        else:
            argv = peers.sshd.ssh("-o", f"Port={s.ssh_ports[at]}", SSH_ALIAS, "true")
        return run_measured(argv, s.ctx.log("wan-first")).seconds

    runs = [(once(0), once(rtt)) for _ in range(FIRST_TRIES)]
    base, far = min(r[0] for r in runs), min(r[1] for r in runs)
    return Sample((far - base) / (rtt / 1000), {"base_ms": base * 1000, "far_ms": far * 1000})


# --- groups -------------------------------------------------------------------------------------


def _throughput_group(s: Setup, key: str, title: str, peer: str,
                      run: Callable[[bool, int], Sample], tether_cmd: str,
                      peer_cmd: str) -> Group:
    sizes = s.ctx.sizes
    contenders = [Contender(f"tether {rtt} ms", partial(run, True, rtt),
                            f"{tether_cmd}  # through the proxy, RTT {rtt} ms", tether=True)
                  for rtt in sizes.wan_rtts]
    contenders += [Contender(f"{peer} {rtt} ms", partial(run, False, rtt),
                             f"{peer_cmd}  # RTT {rtt} ms, {sizes.wan_peer_bytes / MiB:g} MiB")
                   for rtt in sizes.wan_peer_rtts]
    base = f"tether {sizes.wan_rtts[0]} ms"
    targets = []
    for rtt, limit in ((50, 0.8), (150, 0.6)):
        if rtt in sizes.wan_rtts:
            targets.append(Target(f">= {limit}x the 0 ms throughput at {rtt} ms RTT",
                                  f"tether {rtt} ms", ">=", limit, peer=base))
    if 50 in sizes.wan_rtts and 50 in sizes.wan_peer_rtts:
        targets.append(Target(f">= 4x {peer} at 50 ms RTT", "tether 50 ms", ">=", 4.0,
                              peer=f"{peer} 50 ms"))
    far = f"tether {sizes.wan_rtts[-1]} ms"
    targets += [Target(f"client peak RSS <= {RSS_LIMIT} MiB at the largest RTT", far, "<=",
                       RSS_LIMIT, metric="client_rss_mib"),
                Target(f"server peak RSS <= {RSS_LIMIT} MiB at the largest RTT", far, "<=",
                       RSS_LIMIT, metric="server_rss_mib")]
    return Group(key=key, title=title, unit="MiB/s", better="higher", quantity="throughput",
                 contenders=contenders, targets=targets, rounds=sizes.wan_rounds)


def _groups(s: Setup) -> list[Group]:
    size = f"{s.ctx.sizes.wan_bytes / MiB:g} MiB"
    groups = [
        _throughput_group(s, "wan put", f"put {size} through the latency proxy", "scp",
                          lambda t, r: _transfer(s, True, t, r), "tether put FILE HOST:DIR/",
                          "scp FILE HOST:DIR/"),
        _throughput_group(s, "wan get", f"get {size} through the latency proxy", "scp",
                          lambda t, r: _transfer(s, False, t, r), "tether get HOST:FILE DIR/F",
                          "scp HOST:FILE DIR/"),
        _throughput_group(s, "wan stream", f"stream {size} of stdout through the latency proxy",
                          "ssh", lambda t, r: _stream(s, t, r),
                          "tether run HOST -- head -c N /dev/zero",
                          "ssh HOST head -c N /dev/zero"),
    ]
    rtt = max(r for r in s.ctx.sizes.wan_rtts if r <= 50)
    groups.append(Group(
        key="wan first result",
        title=f"`true` remotely, whole process: wall time at {rtt} ms RTT minus at 0 ms",
        unit="RTTs", better="lower", quantity="time",
        contenders=[
            Contender("tether run", lambda: _first_result(s, True, rtt),
                      "tether run HOST -- true", tether=True),
            Contender("ssh", lambda: _first_result(s, False, rtt), "ssh HOST true"),
        ],
        targets=[Target("<= 3.5 round trips beyond process start", "tether run", "<=", 3.5)],
        rounds=max(s.ctx.sizes.wan_rounds, 5),
    ))
    return groups


def run(ctx: Context) -> list[GroupResult]:
    sizes = ctx.sizes
    src = ctx.peers.fast / "src" / NAME
    peer_src = ctx.peers.fast / "src" / PEER_NAME
    make_file(src, sizes.wan_bytes)
    make_file(peer_src, sizes.wan_peer_bytes)
    rtts = sorted({0, *sizes.wan_rtts, *sizes.wan_peer_rtts})
    try:
        with ctx.peers.tether_server() as server:
            sshd_port = ctx.peers.sshd.port
            routes = [(server.port, r) for r in rtts] + [(sshd_port, r) for r in rtts]
            with proxy(ctx, routes) as ports:
                s = Setup(ctx, src, peer_src, server,
                          {r: ports[(server.port, r)] for r in rtts},
                          {r: ports[(sshd_port, r)] for r in rtts})
                _trust_ports(s)
                return [run_group(g, sizes.rounds, 0) for g in _groups(s)]
    finally:
        src.unlink(missing_ok=True)
        peer_src.unlink(missing_ok=True)
