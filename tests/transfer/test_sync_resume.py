"""Large files in a sync: deltas over the network (a changed middle costs about the change),
kill -9 of either side mid-sync then the same sync again ending identical (a kept partial
resumed; an old copy never torn), and a source that changes while it is read reported and never
stored. Real ``tether serve`` and ``tether sync`` processes for the kills; the kill is aimed at a
partial that grew, not timed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import tether
from support import ServeProcess, stop_process
from tether.syncing.common import NoProgress

from .conftest import ServeFactory
from .helpers import (
    HOST,
    Identities,
    MiB,
    Rig,
    file_digest,
    file_size,
    kill9,
    make_file,
    part_of,
    popen_cli,
    run_cli,
    same_bytes,
    snapshot,
    wait_until,
)

BIG = 256 * MiB + 17
THRESHOLD = 16 * MiB


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


async def test_a_changed_middle_costs_about_the_change(api: tether.Connection, rig: Rig,
                                                       work: Path) -> None:
    src = make_file(work / "src" / "data.bin", 32 * MiB, seed=1)
    await api.sync(f"{work / 'src'}/", "dest")
    patch(src, 16 * MiB, os.urandom(MiB))
    result = await api.sync(f"{work / 'src'}/", "dest")
    assert [(e.path, e.action) for e in result.entries] == [("data.bin", "delta")]
    assert result.bytes_sent < 1.6 * MiB
    assert result.bytes_matched > 30 * MiB
    assert result.bytes_signatures < 16 * 1024
    assert same_bytes(src, rig.root / "dest" / "data.bin")
    # inserted bytes shift everything after them: still only the touched chunks travel
    with src.open("rb") as fh:
        whole = fh.read()
    src.write_bytes(whole[:5 * MiB] + b"inserted" * 1000 + whole[5 * MiB:])
    shifted = await api.sync(f"{work / 'src'}/", "dest")
    assert shifted.bytes_sent < 1 * MiB and same_bytes(src, rig.root / "dest" / "data.bin")
    # and a pull builds its own copy the same way
    local = work / "local"
    await api.sync("dest/", str(local), pull=True)
    src.write_bytes(whole[:7 * MiB] + whole[8 * MiB:] + b"tail")  # shrink in the middle, grow
    await api.sync(f"{work / 'src'}/", "dest")
    pulled = await api.sync("dest/", str(local), pull=True)
    assert pulled.entries[0].action == "delta" and pulled.bytes_sent < 1 * MiB
    assert snapshot(local) == snapshot(work / "src")


class Changing:
    """A progress display that changes the file being sent once its first bytes went."""

    def __init__(self, path: Path, how: str) -> None:
        self.path, self.how, self.done = path, how, False

    def total(self, files: int, size: int) -> None:
        pass

    def file_started(self, name: str, size: int, offset: int) -> None:
        pass

    def advanced(self, name: str, size: int) -> None:
        if not self.done and name.endswith(self.path.name):
            self.done = True
            if self.how == "grow":
                with self.path.open("ab") as fh:
                    fh.write(b"more")
            elif self.how == "shrink":
                os.truncate(self.path, 1000)
            else:
                patch(self.path, 5 * MiB, b"torn")

    def file_done(self, name: str) -> None:
        pass


@pytest.mark.parametrize("how", ["grow", "shrink", "rewrite"])
async def test_a_source_changed_while_read_is_reported_never_stored(
        api: tether.Connection, rig: Rig, work: Path, how: str) -> None:
    src = make_file(work / "src" / "live.bin", 64 * MiB, seed=2)
    make_file(work / "src" / "calm.txt", 10)
    result = await api.sync(f"{work / 'src'}/", "dest", progress=Changing(src, how))
    assert result.changed == ["live.bin"]
    assert not (rig.root / "dest" / "live.bin").exists()  # nothing torn under the final name
    assert not part_of(rig.root / "dest" / "live.bin").exists()
    assert (rig.root / "dest" / "calm.txt").exists()
    again = await api.sync(f"{work / 'src'}/", "dest")
    assert again.changed == [] and same_bytes(src, rig.root / "dest" / "live.bin")


@pytest.mark.parametrize("how", ["grow", "shrink", "rewrite"])
async def test_a_source_changed_while_its_delta_is_cut_is_reported_and_the_old_copy_kept(
        api: tether.Connection, rig: Rig, work: Path, how: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The source sends a delta's first records while it still cuts the rest of the file; a
    change found after that ends the file as changed: the destination drops the partial and
    keeps its old copy whole."""
    from tether.storage import delta

    monkeypatch.setattr(delta, "EMIT_EVERY", MiB)  # records leave after the first MiB is cut
    src = make_file(work / "src" / "live.bin", 64 * MiB, seed=2)
    await api.sync(f"{work / 'src'}/", "dest")
    dest = rig.root / "dest" / "live.bin"
    patch(src, 32 * MiB, os.urandom(MiB))
    before = file_digest(dest)
    result = await api.sync(f"{work / 'src'}/", "dest", progress=Changing(src, how))
    assert result.changed == ["live.bin"] and result.sent == 0
    assert file_digest(dest) == before and not part_of(dest).exists()
    again = await api.sync(f"{work / 'src'}/", "dest")
    shrunk = how == "shrink"  # to 1000 bytes: too small for a delta
    assert [(e.path, e.action) for e in again.entries] == [
        ("live.bin", "update" if shrunk else "delta")]
    assert again.changed == [] and same_bytes(src, dest)


class Vanishing(NoProgress):
    """Progress that deletes ``paths`` when the first answer arrives: listed, not yet read."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths

    def total(self, files: int, size: int) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


async def test_a_file_gone_before_it_is_read_is_reported_not_fatal(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    """As rsync's "file has vanished": a small and a large file deleted after they were listed
    are reported as changed, the others are synced, and nothing is stored under their names."""
    make_file(work / "src" / "keep.txt", 10)
    small = make_file(work / "src" / "small.txt", 100)
    large = make_file(work / "src" / "large.bin", 2 * MiB, seed=3)
    result = await api.sync(f"{work / 'src'}/", "dest", progress=Vanishing(small, large))
    assert sorted(result.changed) == ["large.bin", "small.txt"]
    assert sorted(os.listdir(rig.root / "dest")) == ["keep.txt"]


def test_the_cli_reports_a_changed_source_as_a_failure() -> None:
    """What the CLI makes of a result with torn files: exit status 1 and one line naming them
    (the API result above says which files)."""
    from tether.cli.policy import exit_status
    from tether.cli.sync import SyncCliOptions, report
    from tether.errors import SourceChanged
    from tether.syncing.common import SyncResult

    opts = SyncCliOptions(None, 7722, False, False, 0.0, False, False, [], [], [], False,
                          False, False, False, False, 1, None)
    with pytest.raises(SourceChanged, match=r"a\.bin and 1 more changed while being read") as exc:
        report(SyncResult(changed=["a.bin", "b\x1b[31m"]), opts)
    assert exit_status(exc.value) == 1


# --- kill -9 ----------------------------------------------------------------------------------


def sync_args(server: ServeProcess, src: str, dest: str) -> list[str]:
    return ["sync", "-p", str(server.port), "--accept-new", "--json", src, dest]


def kill_when_grown(victim: subprocess.Popen[bytes], partial: Path,
                    watch: subprocess.Popen[bytes]) -> None:
    grew = wait_until(lambda: file_size(partial) >= THRESHOLD or watch.poll() is not None,
                      timeout=60, interval=0.001)
    assert watch.poll() is None, "the sync ended before it could be interrupted"
    assert grew, f"{partial} never grew past {THRESHOLD} bytes"
    kill9(victim)


def rerun(args: list[str], home: Path) -> dict[str, object]:
    done = run_cli(*args, home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def small_tree(root: Path) -> None:
    for i in range(40):
        make_file(root / f"d{i % 4}" / f"f{i}.txt", 1000 + i, seed=i)


@pytest.mark.parametrize("victim", ["client", "server"])
def test_kill9_mid_push_then_the_same_sync_completes(serve: ServeFactory, ids: Identities,
                                                     work: Path, victim: str) -> None:
    server = serve()
    src = work / "src"
    small_tree(src)
    big = make_file(src / "zz" / "big.bin", BIG, seed=3, mode=0o640, mtime_ns=1_234_567_890)
    partial = part_of(server.root / "dest" / "zz" / "big.bin")
    args = sync_args(server, f"{src}/", f"{HOST}:dest")
    proc = popen_cli(*args, home=ids.client_home, log=work / "sync.log")
    try:
        kill_when_grown(proc if victim == "client" else server.proc, partial, proc)
        proc.wait(60)
    finally:
        stop_process(proc)
    assert not (server.root / "dest" / "zz" / "big.bin").exists()
    kept = partial.stat().st_size
    if victim == "server":
        assert proc.returncode == 255
        server = serve(home=server.home, root=server.root, port=server.port)
    summary = rerun(args, ids.client_home)
    assert summary["bytes_sent"] <= BIG - kept + 50_000  # the kept partial was resumed
    assert snapshot(server.root / "dest") == snapshot(src)
    assert same_bytes(big, server.root / "dest" / "zz" / "big.bin")
    assert not partial.exists()


def test_kill9_server_mid_pull_then_the_same_sync_completes(serve: ServeFactory,
                                                            ids: Identities, work: Path) -> None:
    server = serve()
    small_tree(server.root / "tree")
    make_file(server.root / "tree" / "zz" / "big.bin", BIG, seed=4)
    local = work / "local"
    partial = part_of(local / "zz" / "big.bin")
    args = sync_args(server, f"{HOST}:tree/", str(local))
    proc = popen_cli(*args, home=ids.client_home, log=work / "sync.log")
    try:
        kill_when_grown(server.proc, partial, proc)
        proc.wait(60)
    finally:
        stop_process(proc)
    assert proc.returncode == 255
    assert not (local / "zz" / "big.bin").exists()
    kept = partial.stat().st_size
    server = serve(home=server.home, root=server.root, port=server.port)
    summary = rerun(args, ids.client_home)
    assert summary["bytes_sent"] <= BIG - kept + 50_000
    assert snapshot(local) == snapshot(server.root / "tree")


def test_kill9_mid_delta_leaves_the_old_copy_whole(serve: ServeFactory, ids: Identities,
                                                   work: Path) -> None:
    """A delta is built beside the old copy: killed mid-build, the old file is untouched, and
    the same sync again ends with the new one."""
    server = serve()
    src = work / "src"
    big = make_file(src / "big.bin", BIG, seed=5)
    first = run_cli(*sync_args(server, f"{src}/", f"{HOST}:dest"), home=ids.client_home)
    assert first.returncode == 0, first.stderr
    dest = server.root / "dest" / "big.bin"
    old = work / "old.bin"
    old.write_bytes(big.read_bytes())
    for at in range(0, BIG - MiB, 8 * MiB):  # a change every 8 MiB: literals all along
        patch(big, at, os.urandom(4096))
    args = sync_args(server, f"{src}/", f"{HOST}:dest")
    proc = popen_cli(*args, home=ids.client_home, log=work / "sync.log")
    try:
        kill_when_grown(server.proc, part_of(dest), proc)
        proc.wait(60)
    finally:
        stop_process(proc)
    assert same_bytes(old, dest)  # the final name still holds the whole old file
    serve(home=server.home, root=server.root, port=server.port)
    summary = rerun(args, ids.client_home)
    assert summary["bytes_matched"] > BIG // 2
    assert same_bytes(big, dest) and not part_of(dest).exists()
