"""Sizes of a full run (the issue's) and of ``--quick`` (tiny, for CI), and the context that
every workload receives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import GiB, MiB
from bench.peers import Peers


@dataclass(frozen=True)
class Sizes:
    mode: str
    rounds: int
    warmup: int
    commands: int  # workload 1: commands per round
    oneshot_rounds: int  # workload 2: each round is one invocation per contender
    stream_bytes: int
    file_bytes: int
    tree_files: int
    tree_file_bytes: int
    idle_connections: int
    concurrent: int
    sleep_seconds: float
    fleet_hosts: int  # workload 7: loopback hosts 127.0.0.2 on
    wan_bytes: int  # wan: what tether moves per run through the latency proxy
    wan_peer_bytes: int  # wan: what scp and ssh move (their rate is window-bound: slow at RTT)
    wan_rtts: tuple[int, ...]  # wan: round trips (ms) tether runs at; the first is the base
    wan_peer_rtts: tuple[int, ...]  # wan: round trips scp and ssh run at
    wan_rounds: int
    ansible_hosts: int = 5  # workload 8: hosts of the playbook (127.0.0.2 on)
    ansible_tasks: int = 100  # workload 8: tasks in the playbook

    @property
    def fast_bytes(self) -> int:
        """Room needed on the tmpfs: the file, one copy of it, the tree and two copies; the
        sync workload's tree (~32 KiB a file) and 20 copies (its push to 10 hosts)."""
        return 2 * self.file_bytes + 3 * self.tree_files * (self.tree_file_bytes + 4096) + (
            21 * self.tree_files * 40 * 1024)


FULL = Sizes(
    mode="full", rounds=5, warmup=1, commands=200, oneshot_rounds=15, stream_bytes=GiB,
    file_bytes=GiB, tree_files=10_000, tree_file_bytes=4096, idle_connections=1000,
    concurrent=200, sleep_seconds=1.0, fleet_hosts=50, wan_bytes=GiB,
    wan_peer_bytes=256 * MiB, wan_rtts=(0, 10, 50, 150), wan_peer_rtts=(0, 50, 150),
    wan_rounds=5,
)

QUICK = Sizes(
    mode="quick", rounds=3, warmup=0, commands=10, oneshot_rounds=3, stream_bytes=4 * MiB,
    file_bytes=4 * MiB, tree_files=100, tree_file_bytes=4096, idle_connections=20,
    concurrent=10, sleep_seconds=0.2, fleet_hosts=5, wan_bytes=4 * MiB,
    wan_peer_bytes=4 * MiB, wan_rtts=(0, 10), wan_peer_rtts=(10,), wan_rounds=3, ansible_hosts=2,
    ansible_tasks=8,
)


@dataclass
class Context:
    peers: Peers
    sizes: Sizes

    def log(self, name: str) -> Path:
        """A file for one run's stderr, in the temporary directory."""
        return self.peers.tmp / f"{name}.stderr"
