"""Workload 3: stream a command's stdout (``head -c N /dev/zero``) to /dev/null, whole process:
``tether run`` against ``ssh HOST cmd``. Values are MiB/s over the wall time; the peak RSS of the
client and of the server (tether serve itself, or sshd's processes; not the command) ride along.
"""

from __future__ import annotations

from bench.config import Context
from bench.peers import HOST, SSH_ALIAS
from bench.procs import run_measured
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.common import mib_per_s


def run(ctx: Context) -> list[GroupResult]:
    peers, n = ctx.peers, ctx.sizes.stream_bytes
    command = f"head -c {n} /dev/zero"
    with peers.tether_server() as server:
        tether = peers.tether_cli("run", "-p", str(server.port), HOST, "--", command)
        ssh = peers.sshd.ssh(SSH_ALIAS, command)

        def tether_run() -> Sample:
            return mib_per_s(run_measured(tether, ctx.log("stream-tether"), probe=server.probe),
                             n)

        def ssh_run() -> Sample:
            return mib_per_s(run_measured(ssh, ctx.log("stream-ssh"), probe=peers.sshd.probe),
                             n)

        group = Group(
            key="stream", title=f"stream {n / 2**20:g} MiB of stdout to /dev/null",
            unit="MiB/s", better="higher", quantity="throughput",
            contenders=[
                Contender("tether run", tether_run, f"tether run HOST -- '{command}' >/dev/null",
                          tether=True),
                Contender("ssh", ssh_run, f"ssh HOST '{command}' >/dev/null"),
            ],
            targets=[
                Target("throughput >= 1.2x `ssh HOST cmd`", "tether run", ">=", 1.2,
                       peer="ssh"),
                Target("client peak RSS <= 64 MiB", "tether run", "<=", 64,
                       metric="client_rss_mib"),
                Target("server peak RSS <= 64 MiB", "tether run", "<=", 64,
                       metric="server_rss_mib"),
            ],
        )
        return [run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)]
