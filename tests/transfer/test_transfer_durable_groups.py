"""Issue 17, "Durable without rsync's cost": the small files of a sync and of ``put -r`` are made
durable a group at a time, unnamed, and only then linked into place. kill -9 of the server in the
middle, at a point that differs per attempt: every name there holds its whole file (bytes, mode
and mtime as the source's: never torn, never empty), no partial of a small file is left, and the
same transfer again completes identically. A disk that fills in the middle of a group: one clear
error, no partial, every file there whole, and the server goes on serving."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from support import stop_process

from .conftest import ServeFactory
from .helpers import (
    HOST,
    Identities,
    Rig,
    arun_cli,
    kill9,
    make_file,
    popen_cli,
    run_cli,
    snapshot,
    wait_until,
)

Mount = Callable[..., Path]


def _tree(root: Path, count: int) -> Path:
    for n in range(count):
        make_file(root / f"d{n // 100:02}" / f"f{n % 100:03}.bin", 500 + 37 * (n % 97),
                  seed=n, mode=0o640 if n % 3 else 0o600, mtime_ns=1_500_000_000_000_000_000 + n)
    return root


def _files_there(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root)) if root.exists() else 0


def _kill_mid(proc: subprocess.Popen[bytes], server: subprocess.Popen[bytes], dest: Path,
              files: int) -> None:
    try:
        assert wait_until(lambda: _files_there(dest) >= files or proc.poll() is not None,
                          timeout=60, interval=0.001)
        assert proc.poll() is None, "the transfer ended before the server could be killed"
        kill9(server)
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_process(proc)


def _only_whole_files(dest: Path, src: Path) -> int:
    """Every file under ``dest`` is its source's whole file (bytes, mode, mtime); no partial."""
    want = snapshot(src)
    got = {rel: entry for rel, entry in snapshot(dest).items() if entry[0] == "file"}
    parts = [rel for rel in got if rel.endswith(".tether-part")]
    assert parts == [], f"partials left: {parts[:5]}"
    wrong = [rel for rel, entry in got.items() if want.get(rel) != entry]
    assert wrong == [], f"not the source's whole file: {wrong[:5]}"
    return len(got)


@pytest.mark.parametrize("attempt", range(3))
def test_kill9_server_mid_sync_leaves_only_whole_files(serve: ServeFactory, ids: Identities,
                                                       work: Path, attempt: int) -> None:
    src = _tree(work / "src", 3000)
    server = serve()
    dest = server.root / "dest"
    args = ["sync", "-p", str(server.port), "--accept-new", f"{src}/", f"{HOST}:dest"]
    proc = popen_cli(*args, home=ids.client_home, log=work / "sync.log")
    _kill_mid(proc, server.proc, dest, 100 + 900 * attempt)
    assert proc.returncode == 255
    assert 0 < _only_whole_files(dest, src) < 3000
    server = serve(home=server.home, root=server.root, port=server.port)
    again = run_cli(*args, home=ids.client_home)
    assert again.returncode == 0, again.stderr
    assert snapshot(dest) == snapshot(src)


@pytest.mark.parametrize("attempt", range(2))
def test_kill9_server_mid_put_r_leaves_only_whole_files(serve: ServeFactory, ids: Identities,
                                                        work: Path, attempt: int) -> None:
    src = _tree(work / "tree", 3000)
    server = serve()
    dest = server.root / "tree"
    proc = popen_cli("put", "-r", "-p", str(server.port), "--accept-new", str(src), f"{HOST}:",
                     home=ids.client_home, log=work / "put.log")
    _kill_mid(proc, server.proc, dest, 300 + 1200 * attempt)
    assert 0 < _only_whole_files(dest, src) < 3000


async def test_full_disk_mid_group_in_a_sync(rig: Rig, ids: Identities, work: Path,
                                             mount_tmpfs: Mount) -> None:
    small = mount_tmpfs(rig.root / "small", size="1m")
    tree = work / "tree"
    for n in range(40):
        make_file(tree / f"f{n:02}.bin", 60_000, seed=n)
    done = await arun_cli("sync", "-p", str(rig.port), "--accept-new", f"{tree}/",
                          f"{HOST}:small", home=ids.client_home)
    assert done.returncode == 1, done.stderr
    assert "no space left on device" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    stored = _only_whole_files(small, tree)
    assert 0 < stored < 40
    # room again: the same sync completes, and the server served it
    for path in list(small.iterdir())[: stored // 2]:
        path.unlink()
    tree_small = work / "fits"
    for n in range(4):
        make_file(tree_small / f"g{n}.bin", 60_000, seed=100 + n)
    done = await arun_cli("sync", "-p", str(rig.port), "--accept-new", f"{tree_small}/",
                          f"{HOST}:small/again", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert snapshot(small / "again") == snapshot(tree_small)
