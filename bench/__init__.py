"""tether's side-by-side benchmarks against OpenSSH, rsync, AsyncSSH and netcat.

``python -m bench [--quick] [--only NAME]`` sets every peer up on loopback in a temporary
directory, runs the workloads of the benchmark issue (and the fleet one: a command on 50 hosts)
with tether and each peer alternately, prints a table, and writes JSON and a chart under
``bench/results/`` (see docs/benchmarks.md).

Modules, one concern each:

- ``prereqs``   what must be installed, and a description of the machine;
- ``procs``     starting, timing, stopping processes and sampling their memory;
- ``peers``     sshd, its ssh/scp/sftp/rsync clients, a ControlMaster, tether servers, tmpfs;
- ``stats``     contenders, rounds run alternately, medians, ratios and targets;
- ``report``    the table on stdout, the JSON, the PNG chart and docs/benchmarks.md;
- ``workloads`` one module per workload;
- ``assh``      tiny AsyncSSH clients (SFTP, a gather over hosts), each run as its own process;
- ``farm``      many tether servers in one process: the fleet workload's hosts.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"

MiB = 1024 * 1024
GiB = 1024 * MiB
