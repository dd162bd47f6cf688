"""Integrity: a source that grows or shrinks while it is sent is reported (SourceChanged), data
that does not hash to what the sender claims is refused (IntegrityError), and in every case
nothing is ever stored under the final name (an existing file there stays as it was).

Deterministic: a change is made from the progress callback in the middle of the transfer, while
flow control holds the sender well before the end; lies are told by a put driven by hand."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import tether
from tether.errors import BadRequest, IntegrityError, SourceChanged
from tether.protocol import Commit, Done, Put
from tether.storage.source import digest, new_hasher

from .helpers import MiB, Rig, listing, make_file, part_of
from .test_transfer_resume import CutAfter, Interrupt, released

SIZE = 64 * MiB  # far beyond the 4 MiB flow-control window


def shrink(path: Path, to: int) -> None:
    os.truncate(path, to)


def grow(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(b"more bytes")


@pytest.mark.parametrize("change", ["shrink to 0", "shrink to 2 MiB", "grow"])
async def test_a_remote_file_that_changes_during_a_get(api: tether.Connection, rig: Rig,
                                                       work: Path, change: str) -> None:
    remote = make_file(rig.root / "moving.bin", SIZE)
    if change == "grow":
        action = lambda: grow(remote)  # noqa: E731
    else:
        action = lambda: shrink(remote, 0 if change.endswith("0") else 2 * MiB)  # noqa: E731
    local = work / "local"
    local.mkdir()
    match = "grew" if change == "grow" else "shrank"
    with pytest.raises(SourceChanged, match=match):
        await api.get("moving.bin", local, progress=CutAfter(1, action))
    assert not (local / "moving.bin").exists()
    assert [p.name for p in local.iterdir()] in ([], [part_of(local / "moving.bin").name])
    # the connection is fine, and the next get of the (now stable) file is exact
    await api.get("moving.bin", local)
    assert (local / "moving.bin").read_bytes() == remote.read_bytes()


@pytest.mark.parametrize("change", ["shrink", "grow"])
async def test_a_local_file_that_changes_during_a_put(api: tether.Connection, rig: Rig,
                                                      work: Path, change: str) -> None:
    src = make_file(work / "moving.bin", SIZE)

    def action() -> None:
        if change == "grow":
            grow(src)
        else:
            shrink(src, 3 * MiB)

    with pytest.raises(SourceChanged, match="grew" if change == "grow" else "shrank"):
        await api.put(src, "moving.bin", progress=CutAfter(1, action))
    await released(part_of(rig.root / "moving.bin"))
    assert not (rig.root / "moving.bin").exists()
    await api.put(src, "moving.bin")
    assert (rig.root / "moving.bin").read_bytes() == src.read_bytes()


# --- a client whose data does not match what it claims -----------------------------------------


async def hand_put(api: tether.Connection, path: str, size: int, data: bytes, hash_: str,
                   commit_size: int | None = None) -> None:
    """A put driven by hand through the protocol, so that it can lie."""
    handle = api.open_stream(Put, path=path, name="x", kind="file", size=size, mode=0o644)
    await handle.send_data(data)
    handle.send(Commit(size=size if commit_size is None else commit_size, hash=hash_,
                       stream=handle.stream))
    while not isinstance(await handle.next(), Done):
        pass


def blake3_of(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return digest(hasher)


async def test_put_with_a_wrong_hash_stores_nothing(api: tether.Connection, rig: Rig) -> None:
    data = b"x" * 100_000
    with pytest.raises(IntegrityError, match="nothing was stored"):
        await hand_put(api, "lie.bin", len(data), data, blake3_of(b"y" * 100_000))
    assert listing(rig.root) == []  # neither the final name nor a partial
    old = make_file(rig.root / "kept.bin", 10)
    before = old.read_bytes()
    with pytest.raises(IntegrityError):
        handle = api.open_stream(Put, path="kept.bin", name="x", kind="file", size=len(data),
                                 force=True)
        await handle.send_data(data)
        handle.send(Commit(size=len(data), hash=blake3_of(data[:-1] + b"z"),
                           stream=handle.stream))
        while not isinstance(await handle.next(), Done):
            pass
    assert old.read_bytes() == before  # a forced replacement that fails keeps the old file
    await hand_put(api, "true.bin", len(data), data, blake3_of(data))
    assert (rig.root / "true.bin").read_bytes() == data


async def test_put_with_a_wrong_size_is_refused(api: tether.Connection, rig: Rig) -> None:
    data = b"x" * 1000
    with pytest.raises(BadRequest):
        await hand_put(api, "short.bin", 2000, data, blake3_of(data))
    with pytest.raises(BadRequest):
        await hand_put(api, "long.bin", 10, data, blake3_of(data))
    with pytest.raises(BadRequest):
        await hand_put(api, "claim.bin", 1000, data, blake3_of(data), commit_size=999)
    assert not {"short.bin", "long.bin", "claim.bin"} & set(os.listdir(rig.root))
    await hand_put(api, "ok.bin", 1000, data, blake3_of(data))
    assert (rig.root / "ok.bin").read_bytes() == data


async def test_two_puts_to_one_destination_at_once(api: tether.Connection, rig: Rig,
                                                   work: Path) -> None:
    """The partial's lock lets one writer in; the other is told the destination is busy."""
    a = make_file(work / "a" / "same.bin", 12 * MiB, seed=1)
    b = make_file(work / "b" / "same.bin", 12 * MiB, seed=2)
    results = await asyncio.gather(api.put(a, "same.bin"), api.put(b, "same.bin"),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results].count("Busy") == 1, results
    winner = a if not isinstance(results[0], BaseException) else b
    assert (rig.root / "same.bin").read_bytes() == winner.read_bytes()
    assert os.listdir(rig.root) == ["same.bin"]


async def test_an_interrupted_forced_put_keeps_the_old_file(api: tether.Connection, rig: Rig,
                                                            work: Path) -> None:
    old = make_file(rig.root / "doc.bin", 3 * MiB, seed=1)
    before = old.read_bytes()
    src = make_file(work / "doc.bin", 12 * MiB, seed=2)
    with pytest.raises(Interrupt):
        await api.put(src, "doc.bin", force=True, progress=CutAfter(4 * MiB))
    await released(part_of(old))
    assert old.read_bytes() == before  # replaced only by a complete, verified file
    result = await api.put(src, "doc.bin", force=True)
    assert result.files[0].resumed_from > 0
    assert old.read_bytes() == src.read_bytes()
