"""Resume through the API, deterministically: a transfer interrupted at a known point keeps its
partial (never the final name) and the same call continues from it; a partial whose bytes no
longer match the source's prefix — corrupted, or the source changed since — is restarted from
zero, never spliced. The kill -9 variants with real processes are in test_transfer_kill.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import tether

from .helpers import MiB, Rig, flip_bytes, lock_free, make_file, part_of, same_bytes

SIZE = 12 * MiB + 12345


class Interrupt(Exception):
    """Raised from a progress callback to cut a transfer at a known point."""


class CutAfter:
    """A progress callback that, once ``limit`` bytes have moved, interrupts the transfer — or,
    given an ``action``, runs it once instead and lets the transfer go on."""

    def __init__(self, limit: int, action: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.moved = 0
        self.action = action
        self.acted = False

    def total(self, files: int, size: int) -> None:
        pass

    def file_started(self, name: str, size: int, offset: int) -> None:
        pass

    def advanced(self, name: str, size: int) -> None:
        self.moved += size
        if self.moved < self.limit or self.acted:
            return
        if self.action is None:
            raise Interrupt(f"cut after {self.moved} bytes")
        self.acted = True
        self.action()

    def file_done(self, name: str) -> None:
        pass


async def released(partial: Path) -> None:
    """Wait until the server has let go of an abandoned partial (its flock is free)."""
    for _ in range(2000):
        if lock_free(partial):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{partial} is still locked")


async def test_interrupted_put_keeps_only_the_partial_then_resumes(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    src = make_file(work / "big.bin", SIZE, seed=1, mode=0o640, mtime_ns=1_234_567_890)
    with pytest.raises(Interrupt):
        await api.put(src, "big.bin", progress=CutAfter(5 * MiB))
    partial = part_of(rig.root / "big.bin")
    await released(partial)
    assert not (rig.root / "big.bin").exists()  # the final name never holds a partial file
    kept = partial.stat().st_size
    assert 0 < kept < SIZE
    assert os.listdir(rig.root) == [partial.name]

    result = await api.put(src, "big.bin")
    assert result.files[0].resumed_from == kept
    assert result.bytes == SIZE - kept
    assert same_bytes(src, rig.root / "big.bin")
    assert (rig.root / "big.bin").stat().st_mode & 0o777 == 0o640
    assert (rig.root / "big.bin").stat().st_mtime_ns == 1_234_567_890
    assert not partial.exists()


async def test_interrupted_get_keeps_only_the_partial_then_resumes(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    remote = make_file(rig.root / "big.bin", SIZE, seed=2)
    local = work / "local"
    local.mkdir()
    with pytest.raises(Interrupt):
        await api.get("big.bin", local, progress=CutAfter(3 * MiB))
    partial = part_of(local / "big.bin")
    assert os.listdir(local) == [partial.name]
    kept = partial.stat().st_size
    assert 0 < kept < SIZE

    result = await api.get("big.bin", local)
    assert result.files[0].resumed_from == kept
    assert same_bytes(remote, local / "big.bin")
    assert os.listdir(local) == ["big.bin"]


def plant_prefix(src: Path, partial: Path, size: int) -> None:
    """Leave the partial an interrupted transfer of ``src`` would: its first ``size`` bytes."""
    with src.open("rb") as fh:
        partial.write_bytes(fh.read(size))


@pytest.mark.parametrize("kept", [1, 5 * MiB, SIZE - 1, SIZE])
async def test_put_resumes_from_a_matching_partial(api: tether.Connection, rig: Rig,
                                                   work: Path, kept: int) -> None:
    src = make_file(work / "f.bin", SIZE, seed=3)
    plant_prefix(src, part_of(rig.root / "f.bin"), kept)
    result = await api.put(src, "f.bin")
    assert result.files[0].resumed_from == kept
    assert same_bytes(src, rig.root / "f.bin")


@pytest.mark.parametrize("kept", [1, 5 * MiB, SIZE])
async def test_get_resumes_from_a_matching_partial(api: tether.Connection, rig: Rig,
                                                   work: Path, kept: int) -> None:
    remote = make_file(rig.root / "f.bin", SIZE, seed=4)
    plant_prefix(remote, part_of(work / "f.bin"), kept)
    result = await api.get("f.bin", work / "f.bin")
    assert result.files[0].resumed_from == kept
    assert same_bytes(remote, work / "f.bin")


CORRUPTIONS = {
    "first byte": 0,
    "middle of the prefix": 2 * MiB + 77,
    "last byte of the prefix": 5 * MiB - 1,
}


@pytest.mark.parametrize("offset", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
async def test_put_restarts_when_the_partial_is_corrupt(api: tether.Connection, rig: Rig,
                                                        work: Path, offset: int) -> None:
    src = make_file(work / "f.bin", SIZE, seed=5)
    partial = part_of(rig.root / "f.bin")
    plant_prefix(src, partial, 5 * MiB)
    flip_bytes(partial, offset, 1)
    result = await api.put(src, "f.bin")
    assert result.files[0].resumed_from == 0
    assert result.resumed == []
    assert same_bytes(src, rig.root / "f.bin")


@pytest.mark.parametrize("offset", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
async def test_get_restarts_when_the_partial_is_corrupt(api: tether.Connection, rig: Rig,
                                                        work: Path, offset: int) -> None:
    remote = make_file(rig.root / "f.bin", SIZE, seed=6)
    partial = part_of(work / "f.bin")
    plant_prefix(remote, partial, 5 * MiB)
    flip_bytes(partial, offset, 1)
    result = await api.get("f.bin", work / "f.bin")
    assert result.files[0].resumed_from == 0
    assert same_bytes(remote, work / "f.bin")


async def test_put_restarts_when_the_source_changed_since(api: tether.Connection, rig: Rig,
                                                          work: Path) -> None:
    src = make_file(work / "f.bin", SIZE, seed=7)
    plant_prefix(src, part_of(rig.root / "f.bin"), 5 * MiB)
    flip_bytes(src, 4 * MiB, 8)  # edited in place since: same size, another prefix
    result = await api.put(src, "f.bin")
    assert result.files[0].resumed_from == 0
    assert same_bytes(src, rig.root / "f.bin")


async def test_put_restarts_when_the_source_shrank_below_the_partial(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    src = make_file(work / "f.bin", SIZE, seed=8)
    plant_prefix(src, part_of(rig.root / "f.bin"), 8 * MiB)
    os.truncate(src, 6 * MiB)
    result = await api.put(src, "f.bin")
    assert result.files[0].resumed_from == 0
    assert same_bytes(src, rig.root / "f.bin")


async def test_get_restarts_when_the_remote_file_changed_since(api: tether.Connection,
                                                               rig: Rig, work: Path) -> None:
    remote = make_file(rig.root / "f.bin", SIZE, seed=9)
    plant_prefix(remote, part_of(work / "f.bin"), 5 * MiB)
    make_file(remote, SIZE + 3, seed=10)  # replaced by another file
    result = await api.get("f.bin", work / "f.bin")
    assert result.files[0].resumed_from == 0
    assert same_bytes(remote, work / "f.bin")
    plant_prefix(remote, part_of(work / "g.bin"), 9 * MiB)
    os.truncate(remote, 4 * MiB)  # shrank below what the partial holds
    result = await api.get("f.bin", work / "g.bin")
    assert result.files[0].resumed_from == 0
    assert same_bytes(remote, work / "g.bin")


async def test_no_resume_starts_over(api: tether.Connection, rig: Rig, work: Path) -> None:
    src = make_file(work / "f.bin", SIZE, seed=11)
    plant_prefix(src, part_of(rig.root / "f.bin"), 5 * MiB)
    result = await api.put(src, "f.bin", resume=False)
    assert result.files[0].resumed_from == 0
    assert same_bytes(src, rig.root / "f.bin")
    plant_prefix(src, part_of(work / "back.bin"), 5 * MiB)
    result = await api.get("f.bin", work / "back.bin", resume=False)
    assert result.files[0].resumed_from == 0
    assert same_bytes(src, work / "back.bin")


async def test_a_put_cut_twice_resumes_twice(api: tether.Connection, rig: Rig,
                                             work: Path) -> None:
    src = make_file(work / "f.bin", SIZE, seed=12)
    partial = part_of(rig.root / "f.bin")
    with pytest.raises(Interrupt):
        await api.put(src, "f.bin", progress=CutAfter(3 * MiB))
    await released(partial)
    first = partial.stat().st_size
    with pytest.raises(Interrupt):
        await api.put(src, "f.bin", progress=CutAfter(3 * MiB))
    await released(partial)
    second = partial.stat().st_size
    assert 0 < first < second < SIZE
    result = await api.put(src, "f.bin")
    assert result.files[0].resumed_from == second
    assert same_bytes(src, rig.root / "f.bin")
