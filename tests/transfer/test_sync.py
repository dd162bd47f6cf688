"""``sync`` as a user relies on it, against a real server over TLS on loopback: rsync's
trailing-slash rule both ways, unchanged files skipped, --checksum, --delete (never outside
DEST), include/exclude/exclude-from, --dry-run changing nothing, type changes, single files,
modes, mtimes and symlinks kept, and the CLI's itemized lines, JSON and exit status."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import tether
from tether.errors import NotFound

from .helpers import HOST, Rig, arun_cli, make_file, snapshot


def tree(root: Path) -> Path:
    """A small tree: files of several sizes and modes, a nested directory, a symlink."""
    make_file(root / "top.txt", 100, seed=1, mode=0o640, mtime_ns=1_600_000_000_123_456_789)
    make_file(root / "sub" / "mid.bin", 70_000, seed=2)
    make_file(root / "sub" / "deep" / "big.bin", 600_000, seed=3, mode=0o600)
    make_file(root / "sub" / "deep" / "empty", 0)
    (root / "link").symlink_to("sub/mid.bin")
    os.chmod(root / "sub", 0o750)
    return root


@pytest.fixture
def src(work: Path) -> Path:
    return tree(work / "src")


async def test_a_trailing_slash_pushes_the_contents(api: tether.Connection, rig: Rig,
                                                    src: Path) -> None:
    result = await api.sync(f"{src}/", "dest")
    assert snapshot(rig.root / "dest") == snapshot(src)
    assert result.sent == 4 and result.skipped == 0
    assert {e.path: e.action for e in result.entries}["sub/deep/big.bin"] == "send"


async def test_no_trailing_slash_pushes_the_directory_itself(api: tether.Connection, rig: Rig,
                                                             src: Path) -> None:
    (rig.root / "dest").mkdir()
    await api.sync(str(src), "dest")
    assert sorted(os.listdir(rig.root / "dest")) == ["src"]
    assert snapshot(rig.root / "dest" / "src") == snapshot(src)


async def test_pull_follows_the_same_rule(api: tether.Connection, rig: Rig, src: Path,
                                          work: Path) -> None:
    await api.sync(f"{src}/", "tree")
    await api.sync("tree/", str(work / "contents"), pull=True)
    assert snapshot(work / "contents") == snapshot(src)
    (work / "into").mkdir()
    await api.sync("tree", str(work / "into"), pull=True)
    assert sorted(os.listdir(work / "into")) == ["tree"]
    assert snapshot(work / "into" / "tree") == snapshot(src)


async def test_a_second_sync_sends_nothing(api: tether.Connection, rig: Rig, src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    again = await api.sync(f"{src}/", "dest")
    assert (again.sent, again.bytes_sent, again.entries) == (0, 0, [])
    assert again.skipped == 7  # 4 files, 2 directories, 1 symlink
    back = await api.sync("dest/", str(src), pull=True)
    assert (back.sent, back.entries) == (0, [])


async def test_a_changed_file_is_sent_and_only_it(api: tether.Connection, rig: Rig,
                                                  src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    make_file(src / "sub" / "mid.bin", 70_000, seed=9)  # same size, new content and mtime
    result = await api.sync(f"{src}/", "dest")
    assert [(e.path, e.action) for e in result.entries] == [("sub/mid.bin", "update")]
    assert result.sent == 1 and result.bytes_sent == 70_000
    assert snapshot(rig.root / "dest") == snapshot(src)


async def test_checksum_compares_content_not_mtime(api: tether.Connection, rig: Rig,
                                                   src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    target = rig.root / "dest" / "top.txt"
    st = target.stat()
    target.write_bytes(b"X" * 100)  # same size, same mtime, other bytes: only a hash tells
    os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns))
    plain = await api.sync(f"{src}/", "dest")
    assert plain.entries == [] and target.read_bytes() == b"X" * 100
    summed = await api.sync(f"{src}/", "dest", checksum=True)
    assert [(e.path, e.action) for e in summed.entries] == [("top.txt", "update")]
    assert snapshot(rig.root / "dest") == snapshot(src)
    os.utime(src / "top.txt", ns=(1, 1))  # same content, other mtime: attributes only
    touched = await api.sync(f"{src}/", "dest", checksum=True)
    assert [(e.path, e.action) for e in touched.entries] == [("top.txt", "attrs")]
    assert touched.bytes_sent == 0 and target.stat().st_mtime_ns == 1


async def test_delete_removes_what_the_source_lacks_and_nothing_outside(
        api: tether.Connection, rig: Rig, src: Path, work: Path) -> None:
    await api.sync(f"{src}/", "dest")
    dest = rig.root / "dest"
    make_file(dest / "extra.txt", 10)
    make_file(dest / "olddir" / "inner" / "x", 10)
    outside = make_file(work / "outside" / "keep.txt", 10)
    (dest / "sub" / "escape").symlink_to(work / "outside")  # a link out: removed, not followed
    make_file(rig.root / "sibling" / "keep.txt", 10)
    (src / "top.txt").unlink()
    result = await api.sync(f"{src}/", "dest", delete=True)
    assert sorted(e.path for e in result.entries if e.action == "delete") == [
        "extra.txt", "olddir", "sub/escape", "top.txt"]
    assert result.deleted == 4
    assert snapshot(dest) == snapshot(src)
    assert outside.read_bytes() and (rig.root / "sibling" / "keep.txt").exists()


async def test_without_delete_nothing_is_removed(api: tether.Connection, rig: Rig,
                                                 src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    make_file(rig.root / "dest" / "extra.txt", 10)
    result = await api.sync(f"{src}/", "dest")
    assert result.deleted == 0 and (rig.root / "dest" / "extra.txt").exists()


async def test_pull_with_delete(api: tether.Connection, rig: Rig, src: Path,
                                work: Path) -> None:
    await api.sync(f"{src}/", "tree")
    local = work / "local"
    make_file(local / "stale" / "x", 5)
    make_file(local / "stale.txt", 5)
    result = await api.sync("tree/", str(local), pull=True, delete=True)
    assert sorted(e.path for e in result.entries if e.action == "delete") == [
        "stale", "stale.txt"]
    assert snapshot(local) == snapshot(src)


async def test_exclude_include_and_exclude_from(api: tether.Connection, rig: Rig, src: Path,
                                                work: Path) -> None:
    make_file(src / "a.o", 5)
    make_file(src / "keep.o", 5)
    make_file(src / "build" / "out.bin", 5)
    ignore = work / "ignore"
    ignore.write_text("# comments are ignored\nbuild/\n")
    result = await api.sync(f"{src}/", "dest", exclude=["*.o"], include=["keep.o"],
                            exclude_from=[ignore])
    dest = rig.root / "dest"
    assert (dest / "keep.o").exists() and not (dest / "a.o").exists()
    assert not (dest / "build").exists()
    assert "a.o" not in {e.path for e in result.entries}
    make_file(dest / "a.o", 3)  # excluded at the destination: --delete leaves it alone
    make_file(dest / "junk", 3)
    deleted = await api.sync(f"{src}/", "dest", exclude=["*.o"], include=["keep.o"],
                             exclude_from=[ignore], delete=True)
    assert [e.path for e in deleted.entries if e.action == "delete"] == ["junk"]
    assert (dest / "a.o").read_bytes() == make_file(work / "cmp", 3).read_bytes()


async def test_dry_run_changes_nothing(api: tether.Connection, rig: Rig, src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    dest = rig.root / "dest"
    make_file(dest / "extra.txt", 10)
    make_file(src / "new.txt", 10)
    make_file(src / "sub" / "deep" / "big.bin", 600_000, seed=8)
    before = snapshot(dest)
    result = await api.sync(f"{src}/", "dest", delete=True, dry_run=True)
    assert snapshot(dest) == before
    assert {(e.path, e.action) for e in result.entries} == {
        ("new.txt", "send"), ("sub/deep/big.bin", "delta"), ("extra.txt", "delete")}
    assert result.bytes_sent == 0
    fresh = await api.sync(f"{src}/", "never", dry_run=True)
    assert not (rig.root / "never").exists() and len(fresh.entries) == 8


async def test_type_changes_are_applied(api: tether.Connection, rig: Rig, src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    (src / "top.txt").unlink()
    make_file(src / "top.txt" / "now-a-dir", 4)  # file -> directory
    os.chmod(src / "sub", 0o755)
    import shutil
    shutil.rmtree(src / "sub" / "deep")
    (src / "sub" / "deep").symlink_to("../top.txt")  # directory -> symlink
    (src / "link").unlink()
    make_file(src / "link", 7)  # symlink -> file
    result = await api.sync(f"{src}/", "dest")
    actions = {e.path: e.action for e in result.entries}
    assert actions["top.txt"] == actions["sub/deep"] == actions["link"] == "replace"
    assert snapshot(rig.root / "dest") == snapshot(src)


async def test_single_files(api: tether.Connection, rig: Rig, src: Path, work: Path) -> None:
    (rig.root / "box").mkdir()
    await api.sync(str(src / "top.txt"), "box")  # into a directory, by name
    await api.sync(str(src / "top.txt"), "renamed.txt")  # to a new name
    assert snapshot(rig.root / "box") == {"top.txt": snapshot(src)["top.txt"]}
    assert (rig.root / "renamed.txt").read_bytes() == (src / "top.txt").read_bytes()
    again = await api.sync(str(src / "top.txt"), "renamed.txt")
    assert again.sent == 0 and again.skipped == 1
    await api.sync("box/top.txt", str(work / "pulled.txt"), pull=True)
    assert (work / "pulled.txt").read_bytes() == (src / "top.txt").read_bytes()
    (work / "pdir").mkdir()
    await api.sync("box/top.txt", str(work / "pdir"), pull=True)
    assert os.listdir(work / "pdir") == ["top.txt"]


async def test_several_sources_merge(api: tether.Connection, rig: Rig, src: Path,
                                     work: Path) -> None:
    other = work / "other"
    make_file(other / "o.txt", 3)
    await api.sync([f"{src}/", str(other), str(src / "top.txt")], "dest")
    names = sorted(os.listdir(rig.root / "dest"))
    assert names == ["link", "other", "sub", "top.txt"]


async def test_a_missing_source_is_a_clear_error(api: tether.Connection, work: Path) -> None:
    with pytest.raises(NotFound, match="nowhere"):
        await api.sync(str(work / "nowhere"), "dest")


async def test_cli_push_dry_run_json_and_pull(rig: Rig, src: Path, work: Path) -> None:
    home = rig.client_home
    port = str(rig.port)
    dry = await arun_cli("sync", "-n", "--accept-new", "-p", port, f"{src}/",
                         f"{HOST}:dest", home=home)
    assert dry.returncode == 0, dry.stderr
    assert "send     sub/deep/big.bin" in dry.stdout.splitlines()
    assert not (rig.root / "dest").exists()
    done = await arun_cli("sync", "--json", "-p", port, f"{src}/", f"{HOST}:dest", home=home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"sent", "skipped", "deleted", "bytes_sent", "bytes_matched",
                           "seconds", "entries"}
    assert report["sent"] == 4 and report["bytes_sent"] == 670_100
    assert {"path": "link", "action": "symlink"} in report["entries"]
    assert snapshot(rig.root / "dest") == snapshot(src)
    pulled = await arun_cli("sync", "--json", "-p", port, f"{HOST}:dest", str(work / "p"),
                            home=home)
    assert pulled.returncode == 0, pulled.stderr
    assert snapshot(work / "p" / "dest") == snapshot(src)


async def test_cli_usage_errors(rig: Rig, src: Path) -> None:
    both = await arun_cli("sync", f"{HOST}:a", f"{HOST}:b", home=rig.client_home)
    assert both.returncode == 1 and "between two hosts" in both.stderr
    neither = await arun_cli("sync", str(src), "local-dest", home=rig.client_home)
    assert neither.returncode == 1 and "one side must be remote" in neither.stderr
    assert "Traceback" not in both.stderr + neither.stderr


async def test_a_tree_longer_than_the_list_window(api: tether.Connection, rig: Rig,
                                                  work: Path) -> None:
    """3,000 entries: a dozen lists, more than the 8 that may be unanswered at once, each
    answered and served; then --delete of a third of them and a pull back."""
    src = work / "many"
    for i in range(3000):
        make_file(src / f"d{i // 300}" / f"f{i}", i % 700, seed=i)
    result = await api.sync(f"{src}/", "dest")
    assert result.sent == 3000 and snapshot(rig.root / "dest") == snapshot(src)
    for i in range(0, 3000, 3):
        (src / f"d{i // 300}" / f"f{i}").unlink()
    pruned = await api.sync(f"{src}/", "dest", delete=True)
    assert pruned.deleted == 1000 and snapshot(rig.root / "dest") == snapshot(src)
    back = await api.sync("dest/", str(work / "back"), pull=True)
    assert back.sent == 2000 and snapshot(work / "back") == snapshot(src)


async def test_a_full_disk_is_one_line_and_no_file_is_torn(
        api: tether.Connection, rig: Rig, work: Path,
        mount_tmpfs: Callable[..., Path]) -> None:
    """Small files are written on the destination's worker thread: a full disk there still
    ends the sync with one line, every final name holds a whole file, the server serves on,
    and a sync where there is room completes."""
    small = mount_tmpfs(rig.root / "small", size="1m")
    src = work / "many"
    for n in range(40):
        make_file(src / f"d{n % 4}" / f"f{n:02}.bin", 60_000, seed=n)
    done = await arun_cli("sync", "-p", str(rig.port), f"{src}/", f"{HOST}:small/dest",
                          home=rig.client_home)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "no space left on device" in done.stderr
    stored = [p for p in (small / "dest").rglob("*.bin")]
    for path in stored:  # whatever reached its final name is whole
        assert path.read_bytes() == (src / path.relative_to(small / "dest")).read_bytes()
    assert len(stored) < 40
    assert (await api.run("echo still here")).text == "still here\n"
    result = await api.sync(f"{src}/", "dest")  # the root has room
    assert result.sent == 40 and snapshot(rig.root / "dest") == snapshot(src)


async def test_over_plaintext_every_small_file_is_hashed_and_checked(
        work: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TLS nothing authenticates the bytes: a push and a pull over ``--plaintext``
    hash every small file at the sender and check it at the receiver (over TLS they may
    not), and both trees come out byte-identical."""
    from tether.server.listener import Server, ServerConfig
    from tether.storage.source import file_hash

    hashed: dict[str, int] = {"source": 0, "dest": 0}

    def counting(side: str) -> Callable[[bytes], str]:
        def count(data: bytes) -> str:
            hashed[side] += 1
            return file_hash(data)
        return count

    monkeypatch.setattr("tether.syncing.source.file_hash", counting("source"))
    monkeypatch.setattr("tether.syncing.dest.file_hash", counting("dest"))

    server = Server(ServerConfig(home=work / "plain-home", host=HOST, port=0,
                                 root=work / "plain-root", plaintext=True), None)
    (work / "plain-root").mkdir()
    await server.start()
    try:
        async with tether.connect(HOST, server.port, plaintext=True,
                                  home=work / "plain-client") as conn:
            pushed = await conn.sync(f"{src}/", "dest")
            assert pushed.sent == 4 and snapshot(work / "plain-root" / "dest") == snapshot(src)
            pulled = await conn.sync("dest/", str(work / "back"), pull=True)
            assert pulled.sent == 4 and snapshot(work / "back") == snapshot(src)
        # three small files each way (big.bin travels whole, with its own hash)
        assert hashed == {"source": 6, "dest": 6}
    finally:
        await server.close()


async def test_a_large_files_disk_work_does_not_hold_up_other_connections(
        api: tether.Connection, rig: Rig, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delta's copies, verification and fsync can take seconds on a gigabyte: the server
    does them off its event loop, on its disk pool (a share per client identity), so that a
    new connection is served meanwhile."""
    import asyncio
    import threading

    from tether.storage.delta import Builder

    await api.sync(f"{src}/", "dest")
    make_file(src / "sub" / "deep" / "big.bin", 600_000, seed=9)  # a delta this time
    entered, released = threading.Event(), threading.Event()
    waited: list[bool] = []
    threads: list[str] = []
    real = Builder.digest

    def slow_digest(builder: Builder) -> str:
        threads.append(threading.current_thread().name)
        entered.set()
        waited.append(released.wait(20))  # True only if the test got to release it
        return real(builder)

    monkeypatch.setattr(Builder, "digest", slow_digest)
    sync = asyncio.create_task(api.sync(f"{src}/", "dest"))
    try:
        while not entered.is_set():
            await asyncio.sleep(0.01)
        async with rig.connect() as other:  # handshaken by the server's loop meanwhile
            assert (await other.run("echo served")).text == "served\n"
    finally:
        released.set()
        result = await sync
    assert waited == [True] and threads[0].startswith("tether-disk")
    assert {e.path: e.action for e in result.entries}["sub/deep/big.bin"] == "delta"
    assert snapshot(rig.root / "dest") == snapshot(src)
