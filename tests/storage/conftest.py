"""Fixtures for the storage package's tests: real directories (a client's root and a sibling it
must never reach) and, as root, small tmpfs mounts to fill up or make read-only."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SECRET = b"outside secret\n"


@dataclass
class Jail:
    root: Path  # a confined client's root
    outside: Path  # a sibling directory it must never reach

    def outside_unchanged(self) -> bool:
        return sorted(os.listdir(self.outside)) == ["secret.txt"] and (
            self.outside / "secret.txt").read_bytes() == SECRET


@pytest.fixture
def jail(tmp_path: Path) -> Jail:
    root, outside = tmp_path / "jail", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return Jail(root, outside)


Mount = Callable[..., Path]


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``mount_tmpfs(name, size="64k", read_only=False)``: a tmpfs below tmp_path (root only)."""
    points: list[Path] = []

    def mount(name: str, size: str = "64k", read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / name
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        for _ in range(20):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
