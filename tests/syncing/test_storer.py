"""The sync destination's worker thread for small files (syncing/storer.py): every file written
and moved into place in order, the queued bytes bounded, a failure raised at the next step, and
no directory fd left open whatever happens."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tether.errors import UnsafePath
from tether.syncing.storer import Storer


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


async def test_files_land_whole_within_the_budget(tmp_path: Path) -> None:
    before = open_fds()
    storer = Storer(budget=64 * 1024)
    seen_queued = []
    for batch in range(20):
        fd = dir_fd(tmp_path)
        files = [(fd, f"f{batch}-{n}", os.urandom(10_000) if n else b"", 0o640, 10**18 + n)
                 for n in range(5)]
        storer.add(files, [fd])
        seen_queued.append(storer.queued)
        await storer.room()
        assert storer.queued <= 64 * 1024 or len(storer._jobs) <= 1
    await storer.finish()
    storer.close()
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 100 and not any(name.endswith(".tether-part") for name in names)
    assert (tmp_path / "f3-1").stat().st_size == 10_000
    assert (tmp_path / "f3-0").stat().st_mtime_ns == 10**18
    assert oct((tmp_path / "f3-0").stat().st_mode & 0o777) == oct(0o640)
    assert open_fds() == before


async def test_a_failure_is_raised_at_the_next_step_and_nothing_leaks(tmp_path: Path) -> None:
    before = open_fds()
    storer = Storer()
    fd = dir_fd(tmp_path)
    storer.add([(fd, "../evil", b"x", 0o644, 0)], [fd])  # refused by the worker
    while storer._jobs and not storer._jobs[0][0].done():
        await asyncio.sleep(0.01)
    fd2 = dir_fd(tmp_path)
    with pytest.raises(UnsafePath):
        storer.add([(fd2, "fine", b"y", 0o644, 0)], [fd2])
    storer.close()
    assert open_fds() == before
    assert os.listdir(tmp_path) == [] and not (tmp_path.parent / "evil").exists()


async def test_closing_with_queued_files_drops_them_and_their_fds(tmp_path: Path) -> None:
    before = open_fds()
    storer = Storer()
    for n in range(50):
        fd = dir_fd(tmp_path)
        storer.add([(fd, f"g{n}", os.urandom(50_000), 0o644, 0)], [fd])
    storer.close()  # the groups that filled are in place (whole); the rest dropped, unnamed
    names = os.listdir(tmp_path)
    assert not any(name.endswith(".tether-part") for name in names)
    assert all((tmp_path / name).stat().st_size == 50_000 for name in names)
    assert open_fds() == before
