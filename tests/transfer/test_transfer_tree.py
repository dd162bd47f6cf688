"""``put -r`` and ``get -r`` of a tree: empty and nested directories, relative symlinks kept as
links (to files, to directories, dangling), unicode and spaces in names, modes and mtimes; the
copies compare identical, entry by entry, with an independent walk."""

from __future__ import annotations

import os
from pathlib import Path

import tether

from .helpers import MiB, Rig, make_file, snapshot

T0 = 1_700_000_000_000_000_000


def build_tree(root: Path) -> Path:
    """A tree with every kind of entry a transfer must keep."""
    root.mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "nested" / "a" / "b" / "c").mkdir(parents=True)
    (root / "nested" / "a" / "b" / "c" / "also empty").mkdir()
    files = {
        "top.txt": (5, 0o644),
        "with space.bin": (3 * MiB + 11, 0o600),
        "ünïcødé 文件 ✓.txt": (777, 0o640),
        "nested/a/b/c/deep.dat": (1, 0o755),
        "nested/a/empty.txt": (0, 0o644),
        "nested/a/b/big one.bin": (MiB + 1, 0o700),
        "nested/ü ber/x y.txt": (42, 0o444),
        ".hidden": (9, 0o600),
        "name with 'quotes' and \"double\".txt": (3, 0o644),
    }
    for i, (rel, (size, mode)) in enumerate(sorted(files.items())):
        make_file(root / rel, size, seed=i, mode=mode, mtime_ns=T0 + i * 1_000_001)
    for i in range(40):  # many small files, pipelined
        make_file(root / "many" / f"small {i:03}.txt", i * 37, seed=100 + i,
                  mtime_ns=T0 - i)
    os.symlink("with space.bin", root / "link to file")
    os.symlink("nested", root / "link to dir")
    os.symlink("../../ünïcødé 文件 ✓.txt", root / "nested" / "a" / "up link")
    os.symlink("does not exist", root / "dangling")
    os.symlink("b/c/deep.dat", root / "nested" / "a" / "down link")
    os.chmod(root / "nested" / "a" / "b", 0o750)
    os.chmod(root / "empty dir", 0o700)
    return root


async def test_put_r_and_get_r_keep_the_tree(api: tether.Connection, rig: Rig,
                                             work: Path) -> None:
    src = build_tree(work / "local" / "my tree")
    expected = snapshot(src)
    assert {"empty dir", "link to dir", "dangling", "nested/a/up link"} <= expected.keys()

    put = await api.put(src, "incoming", recursive=True)  # does not exist yet: becomes the tree
    assert snapshot(rig.root / "incoming") == expected
    kinds = {f.kind for f in put.files}
    assert kinds == {"dir", "file", "symlink"}
    assert sum(1 for f in put.files if f.kind == "file") == 49

    (work / "down").mkdir()
    got = await api.get("incoming", work / "down", recursive=True)  # an existing directory
    assert snapshot(work / "down" / "incoming") == expected
    assert sum(1 for f in got.files if f.kind == "file") == 49
    # the links are links, never followed: their targets were not copied in their place
    assert os.readlink(work / "down" / "incoming" / "link to dir") == "nested"
    assert not list((work / "down").rglob("*.tether-part"))


async def test_put_r_into_an_existing_directory_nests_by_name(api: tether.Connection, rig: Rig,
                                                              work: Path) -> None:
    src = build_tree(work / "t")
    (rig.root / "dest").mkdir()
    await api.put(src, "dest", recursive=True)
    assert snapshot(rig.root / "dest" / "t") == snapshot(src)
    await api.put(src, "dest/", recursive=True, force=True)  # again, replacing files
    assert snapshot(rig.root / "dest" / "t") == snapshot(src)


async def test_get_r_into_a_new_name(api: tether.Connection, rig: Rig, work: Path) -> None:
    tree = build_tree(rig.root / "remote tree")
    await api.get("remote tree", work / "copy", recursive=True)
    assert snapshot(work / "copy") == snapshot(tree)


async def test_put_r_of_several_trees_and_files(api: tether.Connection, rig: Rig,
                                                work: Path) -> None:
    a = build_tree(work / "a")
    b = make_file(work / "b.txt", 1234)
    c = work / "c"
    (c / "only empty").mkdir(parents=True)
    (rig.root / "box").mkdir()
    await api.put([a, b, c], "box", recursive=True)
    assert snapshot(rig.root / "box" / "a") == snapshot(a)
    assert (rig.root / "box" / "b.txt").read_bytes() == b.read_bytes()
    assert snapshot(rig.root / "box" / "c") == snapshot(c)
