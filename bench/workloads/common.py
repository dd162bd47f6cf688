"""What several workloads share: in-process connections, and samples made from timed runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench import MiB
from bench.peers import HOST, Peers, Sshd, TetherServer
from bench.procs import BenchError, Measured
from bench.stats import Sample


async def tether_connect(peers: Peers, server: TetherServer) -> Any:
    """An open, authenticated ``tether.connect`` connection to ``server``."""
    import tether

    return await tether.connect(HOST, server.port, home=peers.client_home,
                                plaintext=server.plaintext)


async def asyncssh_connect(sshd: Sshd) -> Any:
    """An AsyncSSH connection to the private sshd (no ~/.ssh config, no agent)."""
    import asyncssh

    return await asyncssh.connect(
        HOST, sshd.port, username=sshd.user, client_keys=[str(sshd.key)],
        known_hosts=str(sshd.known_hosts), config=None, agent_path=None,
    )


def rate_sample(m: Measured, amount: float) -> Sample:
    """``amount`` per second, with both sides' peak RSS and the wall time as extras."""
    extra = {"seconds": m.seconds, **m.extra}
    if m.client_mib:  # a process that ends before the first sample has none
        extra["client_rss_mib"] = m.client_mib
    if m.server_mib:
        extra["server_rss_mib"] = m.server_mib
    return Sample(amount / m.seconds, extra)


def mib_per_s(m: Measured, nbytes: int) -> Sample:
    return rate_sample(m, nbytes / MiB)


def check_size(path: Path, size: int) -> None:
    """A transfer's destination must be there, whole."""
    got = path.stat().st_size if path.exists() else -1
    if got != size:
        raise BenchError(f"{path} has {got} bytes, expected {size}")


def count_files(root: Path) -> int:
    """Regular files under ``root``."""
    return sum(len(files) for _, _, files in os.walk(root))
