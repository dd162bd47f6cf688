"""The listing a push to several hosts shares (``tether.client.syncs.SharedListing``): the
sources are walked once and every host gets the same lists under the same entry numbers; a walk
that fails fails every host (never a shorter listing, which with ``--delete`` would remove what
was not listed); a small file is read once and every host gets that same version of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tether.client import syncs
from tether.errors import TetherError

from .helpers import make_file


def tree(work: Path) -> Path:
    """300 files in a/ (more than one list's 256 entries), then 5 in z/."""
    src = work / "src"
    for i in range(300):
        make_file(src / "a" / f"f{i:03d}", 10 + i, seed=i)
    for i in range(5):
        make_file(src / "z" / f"g{i}", 100, seed=1000 + i)
    return src


def test_every_host_gets_the_same_numbered_lists_from_one_walk(work: Path) -> None:
    src = tree(work)
    shared = syncs.SharedListing([f"{src}/"], {}, home=work / "home")
    shared.open()
    try:
        one, two = shared.lists(), shared.lists()
        first = [next(one)]
        second = [next(two), next(two)]  # the second host runs ahead, then the first catches up
        first += list(one)
        second += list(two)
    finally:
        shared.close()
    assert first == second and len(first) == 2
    assert [start for start, _ in first] == [0, 256]
    names = [name for _, fields in first for name in fields["names"]]
    assert names == [e.name for e in shared.entries]  # each entry once, whoever listed it
    on_disk = sorted(os.path.relpath(os.path.join(d, n), src)
                     for d, dirs, files in os.walk(src) for n in dirs + files)
    assert sorted(names) == on_disk


def test_a_walk_that_fails_fails_every_host(work: Path) -> None:
    src = tree(work)
    shared = syncs.SharedListing([f"{src}/"], {}, home=work / "home")
    shared.open()
    try:
        one, two = shared.lists(), shared.lists()
        next(one)  # lists a/ and z/ themselves, then the first 254 files of a/
        shutil.rmtree(src / "z")  # gone before the walk enters it
        with pytest.raises(TetherError):
            list(one)
        assert next(two)[0] == 0
        with pytest.raises(TetherError):  # not the end of a shorter listing
            next(two)
    finally:
        shared.close()


@pytest.mark.parametrize("budget", [syncs.SHARED_BYTES, 0])
def test_every_host_gets_the_version_of_a_small_file_first_read(work: Path,
                                                                budget: int) -> None:
    """Read once for every host while kept; without room to keep it, a host that reads it
    after it changed finds it changed (then committed as such, never sent)."""
    src = tree(work)
    shared = syncs.SharedListing([f"{src}/"], {}, budget, work / "home")
    shared.open()
    try:
        for _ in shared.lists():
            pass
        index = next(i for i, e in enumerate(shared.entries) if e.name == "a/f007")
        entry = shared.entries[index]
        first = shared.small(index, entry)
        assert first is not None and first == (src / "a" / "f007").read_bytes()
        make_file(src / "a" / "f007", 17, seed=99)  # same size, other bytes, a new mtime
        again = shared.small(index, entry)
    finally:
        shared.close()
    assert again == (first if budget else None)


def test_a_missing_source_fails_every_host(work: Path) -> None:
    shared = syncs.SharedListing([f"{work}/absent/"], {}, home=work / "home")
    for _ in range(2):
        with pytest.raises(TetherError, match="absent"):
            shared.open()
    shared.close()
