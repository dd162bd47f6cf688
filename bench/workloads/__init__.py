"""The workloads of the benchmark issue, in its order, then the fleet (issue 7). Each module's
``run(ctx)`` sets up what it needs (fresh tether servers, source files), runs its groups and
cleans up after itself. Workloads 8 and 9 (ansible, mux) are issue 21's; wan (long fat
networks, through a latency proxy) is issue 18's.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.config import Context
from bench.stats import GroupResult
from bench.workloads import (
    ansible,
    bulk,
    fleet,
    forward,
    latency,
    mux,
    oneshot,
    scale,
    stream,
    sync,
    tree,
    wan,
)

Workload = Callable[[Context], list[GroupResult]]

WORKLOADS: dict[str, Workload] = {
    "latency": latency.run,
    "oneshot": oneshot.run,
    "stream": stream.run,
    "bulk": bulk.run,
    "tree": tree.run,
    "scale": scale.run,
    "fleet": fleet.run,
    "ansible": ansible.run,
    "mux": mux.run,
    "sync": sync.run,
    "wan": wan.run,
    "forward": forward.run,
}
