"""What the benchmark needs installed, and a description of the machine it ran on.

Missing pieces are named exactly, with the command that installs them, before anything starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

from bench import REPO

APT = "apt-get install -y openssh-server openssh-client rsync netcat-openbsd"
PIP = "pip install -e '.[bench]'"
SSHD = "/usr/sbin/sshd"

# program -> the Debian package that provides it
PROGRAMS: dict[str, str] = {
    SSHD: "openssh-server",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "sftp": "openssh-client",
    "ssh-keygen": "openssh-client",
    "rsync": "rsync",
    "nc": "netcat-openbsd",
    "tar": "tar",
    "head": "coreutils",
    "cp": "coreutils",
}
MODULES: dict[str, str] = {"asyncssh": "asyncssh", "matplotlib": "matplotlib", "psutil": "psutil",
                           "ansible": "ansible-core"}


def _have(program: str) -> bool:
    if os.path.isabs(program):
        return os.access(program, os.X_OK)
    return shutil.which(program) is not None


def _nc_is_openbsd() -> bool:
    with contextlib.suppress(OSError):
        out = subprocess.run(["nc", "-h"], capture_output=True, text=True, timeout=5)
        return "OpenBSD" in out.stdout + out.stderr
    return False


def missing() -> list[str]:
    """One line per missing program or module, each naming what installs it."""
    lines = [f"{p} (apt: {pkg})" for p, pkg in PROGRAMS.items() if not _have(p)]
    if _have("nc") and not _nc_is_openbsd():
        lines.append("nc is not OpenBSD netcat (apt: netcat-openbsd)")
    lines += [f"python module {m} (pip: {pkg})" for m, pkg in MODULES.items()
              if importlib.util.find_spec(m) is None]
    if tether_bin() is None:
        lines.append(f"the tether command next to {sys.executable} (pip install -e .)")
    return lines


def explain(lines: list[str]) -> str:
    """The message printed when something is missing."""
    body = "\n".join(f"  - {line}" for line in lines)
    return (f"bench: cannot run, missing:\n{body}\ninstall with:\n  {APT}\n  {PIP}\n"
            f"(as root or with sudo for apt-get; pip inside the venv that has tether)")


def tether_bin() -> Path | None:
    """The ``tether`` console script of the interpreter running the benchmark."""
    beside = Path(sys.executable).parent / "tether"
    if beside.exists():
        return beside
    found = shutil.which("tether")
    return Path(found) if found else None


# --- the machine --------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else ""
    return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version(module)
    return "not installed"


def _git_commit() -> str:
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"])
    return f"{head}{' (src modified)' if dirty else ''}"


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks since boot, from /proc/stat's first line; None off Linux. Slow
    ratios on one host and fast on another can be other guests taking the CPU or a slower
    CPU: with the steal recorded, a run says which."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]  # user .. steal
        return fields[7], sum(fields)
    return None


def stolen(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    """The share of CPU time the hypervisor took between two ``cpu_ticks()``."""
    if before is None or after is None or after[1] <= before[1]:
        return "not known"
    return f"{100 * (after[0] - before[0]) / (after[1] - before[1]):.1f}%"


def machine() -> dict[str, str | int | float]:
    """nproc, memory, CPU, kernel and the versions of everything measured."""
    import psutil

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpus": os.cpu_count() or 0,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "openssh": _first_line(["ssh", "-V"]),
        "rsync": _first_line(["rsync", "--version"]),
        "asyncssh": _version("asyncssh"),
        "tether": _version("tether"),
        "tether_commit": _git_commit(),
    }
