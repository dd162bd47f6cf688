"""The benchmark harness must keep working: ``python -m bench --quick`` runs every workload
against every peer at tiny sizes (the fleet one on 5 loopback hosts), exits 0 and writes a JSON
with every workload. Its numbers are not asserted (the machines are shared and noisy)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = {"latency", "oneshot", "stream", "bulk", "tree", "scale", "fleet", "wan", "ansible",
             "mux", "forward", "sync"}
PROGRAMS = {"/usr/sbin/sshd": "openssh-server", "ssh": "openssh-client", "scp": "openssh-client",
            "sftp": "openssh-client", "ssh-keygen": "openssh-client", "rsync": "rsync",
            "nc": "netcat-openbsd"}
MODULES = ("asyncssh", "matplotlib", "psutil", "ansible")


def _missing() -> list[str]:
    lines = [f"{p} (apt-get install -y {pkg})" for p, pkg in PROGRAMS.items()
             if not (os.access(p, os.X_OK) if p.startswith("/") else shutil.which(p))]
    lines += [f"python module {m} (pip install -e '.[bench,ansible]')" for m in MODULES
              if importlib.util.find_spec(m) is None]
    if os.geteuid() != 0 and not os.path.isdir("/run/sshd"):
        lines.append("/run/sshd (sshd's privilege separation directory; run as root once)")
    return lines


@pytest.mark.timeout(600)
def test_quick_run_writes_every_workload(tmp_path: Path) -> None:
    lacking = _missing()
    if lacking:
        pytest.skip("benchmark peers not installed: " + "; ".join(lacking))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "latest-quick.json").read_text())
    assert set(data["workloads"]) == WORKLOADS
    assert not data["failed"]
    # how much CPU the hypervisor took, per workload and in all, read from /proc/stat
    assert set(data["steal"]) == WORKLOADS
    for share in [*data["steal"].values(), data["steal_whole_run"]]:
        assert share.endswith("%") and 0 <= float(share[:-1]) <= 100, share
    for groups in data["workloads"].values():
        for group in groups.values():
            for contender in group["contenders"].values():
                assert len(contender["value"]["samples"]) >= 3
    assert (tmp_path / "latest-quick.png").stat().st_size > 0
