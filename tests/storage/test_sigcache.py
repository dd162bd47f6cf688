"""Kept signatures (storage/sigcache.py) on real files: found only while the file is unchanged,
a torn, foreign or mis-sized entry ignored, a directory not our own neither read nor written,
and the bounds in files and bytes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tether.storage import sigcache
from tether.storage.delta import signature
from tether.storage.hashcache import cache_dir, file_key
from tether.storage.sigcache import Signatures


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


def signed(path: Path, size: int = 300_000, seed: int = 0) -> tuple[os.stat_result, bytes]:
    path.write_bytes(bytes([seed]) * size)
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd), signature(fd, size, path.name)
    finally:
        os.close(fd)


def entries(home: Path) -> list[Path]:
    return sorted(Path(cache_dir(home)).glob("*.sig"))


def test_found_while_the_file_is_unchanged(home: Path, tmp_path: Path) -> None:
    sigs = Signatures(cache_dir(home))
    st, sig = signed(tmp_path / "f")
    sigs.put(st, sig)
    assert sigs.get(os.stat(tmp_path / "f")) == sig
    os.utime(tmp_path / "f", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new ctime
    assert sigs.get(os.stat(tmp_path / "f")) is None
    assert Signatures(None).get(st) is None  # no directory: nothing kept, nothing found
    sigs.drop(st)
    assert entries(home) == []


@pytest.mark.parametrize("spoil", ["torn", "flipped", "wrong size", "not ours"])
def test_a_spoiled_entry_is_ignored(home: Path, tmp_path: Path, spoil: str) -> None:
    sigs = Signatures(cache_dir(home))
    st, sig = signed(tmp_path / "f")
    if spoil == "wrong size":  # records that do not add up to the file's size
        sigs.put(st, sig[:-20])
    else:
        sigs.put(st, sig)
    [entry] = entries(home)
    data = entry.read_bytes()
    if spoil == "torn":
        entry.write_bytes(data[:-7])
    elif spoil == "flipped":
        entry.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif spoil == "not ours":
        os.chown(entry, 12345, 12345)
    assert sigs.get(st) is None


def test_a_directory_others_may_write_is_not_used(home: Path, tmp_path: Path) -> None:
    where = Path(cache_dir(home))
    where.mkdir(parents=True)
    st, sig = signed(tmp_path / "f")
    Signatures(str(where)).put(st, sig)
    where.chmod(0o777)
    assert Signatures(str(where)).get(st) is None
    (tmp_path / "g").write_bytes(b"g" * 300_000)
    Signatures(str(where)).put(os.stat(tmp_path / "g"), sig)
    assert len(entries(home)) == 1  # nothing more was written there


def test_bounded_in_files_and_bytes(home: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sigcache, "MAX_FILES", 3)
    sigs = Signatures(cache_dir(home))
    kept = []
    for i in range(5):
        st, sig = signed(tmp_path / f"f{i}", seed=i)
        sigs.put(st, sig)
        kept.append(st)
        time.sleep(0.01)  # an mtime each: the least recently used is known
    assert len(entries(home)) == 3
    assert sigs.get(kept[0]) is None and sigs.get(kept[4]) is not None  # the oldest went
    monkeypatch.setattr(sigcache, "MAX_BYTES", 1)
    st, sig = signed(tmp_path / "big", seed=9)
    sigs.put(st, sig)
    assert entries(home) == [Path(cache_dir(home)) / sigs_name(st)]  # the newest alone


def sigs_name(st: os.stat_result) -> str:
    return file_key(st).hex() + ".sig"
