"""The hash cache (storage/hashcache.py) on real files: what a run learns is found by the next
one only while the file is unchanged (a content change with size and mtime restored is not), the
racy rule, mirroring, corrupt and foreign files ignored, directories not our own refused, and
the bounds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import pytest

from tether.storage import hashcache
from tether.storage.hashcache import HashCaches, TreeHashes, cache_dir, trusted

LONG_AGO = 10 * 1_000_000_000  # a read started this long after a file's ctime is trusted


def blake(data: bytes) -> str:
    return f"blake3:{blake3.blake3(data).hexdigest()}"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(bytes([i]) * (1000 + i))
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


def open_tree(home: Path, root: Path, whole: bool = True) -> tuple[HashCaches, TreeHashes, int]:
    caches = HashCaches(cache_dir(home))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    return caches, caches.tree(fd, whole), fd


def learn(home: Path, root: Path, complete: bool = True, names: list[str] | None = None
          ) -> None:
    """One run: hash (through the cache) every file named, long after its ctime, and save."""
    caches, hashes, fd = open_tree(home, root)
    try:
        for name in names if names is not None else sorted(os.listdir(root)):
            st = os.lstat(root / name)
            if hashes.lookup(st) is None:
                hashes.note(st, blake((root / name).read_bytes()), st.st_ctime_ns + LONG_AGO)
        caches.save(complete)
    finally:
        os.close(fd)


def known(home: Path, root: Path) -> dict[str, str | None]:
    """What a new run finds for each file (and it saves nothing: it is a partial run)."""
    _, hashes, fd = open_tree(home, root)
    os.close(fd)
    return {name: hashes.lookup(os.lstat(root / name)) for name in sorted(os.listdir(root))}


def cache_files(home: Path) -> list[Path]:
    return sorted(p for p in Path(cache_dir(home)).iterdir() if p.name.endswith(".hc"))


def test_a_learned_hash_is_found_by_the_next_run(home: Path, tree: Path) -> None:
    learn(home, tree)
    found = known(home, tree)
    assert found == {name: blake((tree / name).read_bytes()) for name in found}
    assert os.stat(cache_dir(home)).st_mode & 0o777 == 0o700
    assert len(cache_files(home)) == 1


def test_a_change_with_size_and_mtime_restored_is_not_found(home: Path, tree: Path) -> None:
    learn(home, tree)
    st = os.stat(tree / "f1")
    time.sleep(0.01)
    (tree / "f1").write_bytes(b"X" * st.st_size)  # same size...
    os.utime(tree / "f1", ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and mtime: the ctime moved
    after = os.stat(tree / "f1")
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    found = known(home, tree)
    assert found["f1"] is None and found["f0"] is not None


def test_a_replaced_file_is_not_found(home: Path, tree: Path) -> None:
    learn(home, tree)
    st = os.stat(tree / "f2")
    (tree / "new").write_bytes((tree / "f2").read_bytes())
    os.utime(tree / "new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tree / "new", tree / "f2")  # another inode
    assert known(home, tree)["f2"] is None


def test_the_racy_rule(home: Path, tree: Path) -> None:
    st = os.lstat(tree / "f0")
    assert not trusted(st, st.st_ctime_ns)
    assert not trusted(st, st.st_ctime_ns + hashcache.TICK_NS - 1)
    assert not trusted(st, st.st_ctime_ns - LONG_AGO)  # a ctime in the future
    assert trusted(st, st.st_ctime_ns + hashcache.TICK_NS)
    whole_second = os.stat_result((*st[:10],), {"st_ctime_ns": 1_700_000_000_000_000_000})
    assert not trusted(whole_second, 1_700_000_000_000_000_000 + hashcache.TICK_NS)
    assert trusted(whole_second, 1_700_000_000_000_000_000 + hashcache.COARSE_TICK_NS)
    caches, hashes, fd = open_tree(home, tree)
    os.close(fd)
    hashes.note(st, blake((tree / "f0").read_bytes()), st.st_ctime_ns + 1_000_000)  # racy
    assert hashes.racy == 1 and hashes.lookup(st) is None
    caches.save(False)
    assert known(home, tree)["f0"] is None  # not written: the next run reads it again


def test_hash_fd_keeps_a_hash_only_if_the_read_began_a_tick_after_the_ctime(
        home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def opener(name: str) -> int:
        return os.open(tree / name, os.O_RDONLY)

    caches, hashes, fd = open_tree(home, tree)
    os.close(fd)
    monkeypatch.setattr(hashcache, "TICK_NS", 3600 * 1_000_000_000)  # every file is racy
    st = os.lstat(tree / "f0")
    assert hashes.hashed(st, opener, "f0") == blake((tree / "f0").read_bytes())
    assert hashes.racy == 1 and hashes.lookup(st) is None  # used, not kept
    monkeypatch.setattr(hashcache, "TICK_NS", 0)  # any read after the ctime is trusted
    assert hashes.hashed(st, opener, "f0") == blake((tree / "f0").read_bytes())
    assert hashes.lookup(st) == blake((tree / "f0").read_bytes())
    caches.save(False)
    assert known(home, tree)["f0"] == blake((tree / "f0").read_bytes())


def test_hash_fd_keeps_nothing_for_a_file_that_is_not_the_one_listed(
        home: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashcache, "TICK_NS", 0)
    _, hashes, fd = open_tree(home, tree)
    os.close(fd)
    listed = os.lstat(tree / "f0")
    got = hashes.hash_fd(os.open(tree / "f1", os.O_RDONLY), listed)  # swapped in meanwhile
    assert got == blake((tree / "f1").read_bytes()) and hashes.lookup(listed) is None


def test_a_complete_run_drops_what_it_did_not_see_and_a_partial_one_keeps_it(
        home: Path, tree: Path) -> None:
    learn(home, tree)
    learn(home, tree, complete=False, names=["f0"])
    assert all(known(home, tree).values())
    learn(home, tree, complete=True, names=["f0", "f1"])
    found = known(home, tree)
    assert found["f0"] and found["f1"] and not found["f2"] and not found["f4"]


def test_a_single_file_run_never_drops_the_rest_of_its_directory(home: Path,
                                                                  tree: Path) -> None:
    learn(home, tree)
    caches, hashes, fd = open_tree(home, tree, whole=False)
    try:
        assert hashes.lookup(os.lstat(tree / "f0"))
        caches.save(True)
    finally:
        os.close(fd)
    assert all(known(home, tree).values())


def test_an_unchanged_run_rewrites_nothing(home: Path, tree: Path) -> None:
    learn(home, tree)
    [path] = cache_files(home)
    before = os.stat(path)
    time.sleep(0.01)
    learn(home, tree)
    after = os.stat(path)
    assert after.st_ino == before.st_ino  # not replaced...
    assert after.st_mtime_ns > before.st_mtime_ns  # ...only marked as recently used


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "version", "empty"])
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(home: Path, tree: Path,
                                                                 damage: str) -> None:
    learn(home, tree)
    [path] = cache_files(home)
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "truncated":
        del data[-7:]
    elif damage == "flipped":
        data[-3] ^= 0x40  # a bit of a hash: the digest no longer matches
    elif damage == "version":
        data[16] += 1
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert not any(known(home, tree).values())
    learn(home, tree)
    assert all(known(home, tree).values())


def test_another_roots_file_is_not_read_as_ours(home: Path, tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    learn(home, tree)
    [path] = cache_files(home)
    st = os.stat(other)
    path.rename(Path(cache_dir(home)) / f"{st.st_dev:x}-{st.st_ino:x}.hc")
    _, hashes, fd = open_tree(home, other)
    os.close(fd)
    assert hashes.enabled and hashes._load() == {}


def test_a_directory_others_may_write_is_not_used(home: Path, tree: Path) -> None:
    os.makedirs(cache_dir(home), mode=0o700)
    os.chmod(cache_dir(home), 0o777)
    _, hashes, fd = open_tree(home, tree)
    os.close(fd)
    assert not hashes.enabled
    learn(home, tree)
    assert os.listdir(cache_dir(home)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_directory_of_another_user_is_not_used(home: Path, tree: Path) -> None:
    os.makedirs(cache_dir(home), mode=0o700)
    os.chown(cache_dir(home), 65534, 65534)
    _, hashes, fd = open_tree(home, tree)
    os.close(fd)
    assert not hashes.enabled


def test_an_unusable_home_means_no_cache_and_no_error(tmp_path: Path, tree: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    caches, hashes, fd = open_tree(blocker, tree)  # its "home" is a file: nothing can be made
    try:
        st = os.lstat(tree / "f0")
        hashes.note(st, blake(b"x"), st.st_ctime_ns + LONG_AGO)
        assert hashes.lookup(st) is None
        caches.save(True)
    finally:
        os.close(fd)
    assert not hashes.enabled


def test_caches_are_bounded_in_files_and_entries(home: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashcache, "MAX_FILES", 3)
    monkeypatch.setattr(hashcache, "MAX_ENTRIES", 2)
    roots = []
    for i in range(5):
        root = tmp_path / f"r{i}"
        root.mkdir()
        for j in range(4):
            (root / f"f{j}").write_bytes(b"%d" % j)
        roots.append(root)
        learn(home, root)
        time.sleep(0.01)  # an mtime each: the least recently used is known
    assert len(cache_files(home)) == 3
    assert sum(1 for v in known(home, roots[-1]).values() if v) == 2
    assert not any(known(home, roots[0]).values())  # the oldest went first


def test_a_stale_temporary_file_is_removed(home: Path, tree: Path) -> None:
    learn(home, tree)
    stale = Path(cache_dir(home)) / ".tmp-killed.hc"
    stale.write_bytes(b"half")
    os.utime(stale, ns=(0, 0))
    (tree / "f0").write_bytes(b"changed")  # so that the next save writes
    os.utime(tree / "f0", ns=(1, 1))
    learn(home, tree, names=["f0", "f1"])
    assert not stale.exists()


def test_a_disabled_cache_still_hashes(tree: Path) -> None:
    fd = os.open(tree, os.O_RDONLY)
    hashes = HashCaches(None).tree(fd)
    os.close(fd)
    st = os.lstat(tree / "f3")
    got = hashes.hashed(st, lambda name: os.open(tree / name, os.O_RDONLY), "f3")
    assert got == blake((tree / "f3").read_bytes()) and not hashes.enabled


def test_a_partial_run_keeps_at_most_its_limit_and_drops_the_oldest(home: Path,
                                                                    tree: Path) -> None:
    learn(home, tree)  # f0..f4, saved in that order
    time.sleep(0.01)
    (tree / "f0").write_bytes(b"new")  # its old entry is garbage now
    caches, hashes, fd = open_tree(home, tree)
    try:
        st = os.lstat(tree / "f0")
        hashes.note(st, blake(b"new"), st.st_ctime_ns + LONG_AGO)
        caches.save(False, limit=5)
    finally:
        os.close(fd)
    _, again, fd = open_tree(home, tree)
    os.close(fd)
    assert len(again._load()) == 5  # f0's old entry went, the first saved
    assert all(known(home, tree).values())
