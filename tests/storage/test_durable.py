"""Durable groups with real files (issue 17, "Durable without rsync's cost"): a final name only
ever holds a complete, verified file that was fsynced before it got that name; each directory is
fsynced after its files are linked; a failure to make a group durable names the file and leaves
nothing of the group (no partial); a name that is taken keeps what is there; the files before it
are in place; a group holds a bounded number of files; the background flavour reports a failure
on the next call; without ``O_TMPFILE`` named partials do the same job."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.errors import AlreadyExists, NoSpace, RemoteError
from tether.storage import durable
from tether.storage.durable import GROUP_DIRS, GROUP_FILES, DurableGroup

T0 = 1_600_000_000_000_000_000


@pytest.fixture(autouse=True)
def fsync_each(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path where a group fsyncs each of its files (where syncfs gave way, or there is
    none); the tests of the syncfs path (named so) keep it."""
    if "syncfs" not in request.node.name:
        monkeypatch.setattr(durable, "syncfs_of", lambda dev: None)


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def content(n: int) -> bytes:
    return f"file {n} ".encode() * (50 + n)


def names(path: Path) -> list[str]:
    return sorted(os.listdir(path))


class FsyncLog:
    """Every fsync, from any thread: the fd's kind and the names in the watched directory then."""

    def __init__(self, watched: Path, real: object) -> None:
        self.watched, self.real = watched, real
        self.events: list[tuple[str, set[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        with self.lock:
            self.events.append((kind, set(os.listdir(self.watched))))
        self.real(fd)  # type: ignore[operator]


@pytest.mark.parametrize("background", [False, True])
def test_files_are_fsynced_before_their_names_and_the_directory_after(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    log = FsyncLog(tmp_path, os.fsync)
    monkeypatch.setattr(os, "fsync", log)
    placed: list[str] = []
    group = DurableGroup(background=background)
    for n in range(10):
        group.add(dir_fd, f"f{n}", content(n), 0o640, T0 + n, on_placed=placed.append)
    assert names(tmp_path) == []  # nothing has a name before the group is durable
    group.wait()
    group.close()
    files = [seen for kind, seen in log.events if kind == "file"]
    dirs = [seen for kind, seen in log.events if kind == "dir"]
    assert len(files) == 10 and all(seen == set() for seen in files)
    assert dirs == [{f"f{n}" for n in range(10)}]  # once, after every link
    assert placed == [f"f{n}" for n in range(10)]
    for n in range(10):
        st = (tmp_path / f"f{n}").stat()
        assert (tmp_path / f"f{n}").read_bytes() == content(n)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, T0 + n)


def test_a_group_is_settled_at_its_file_and_directory_bounds(tmp_path: Path,
                                                             dir_fd: int) -> None:
    group = DurableGroup()
    for n in range(GROUP_FILES):
        group.add(dir_fd, f"f{n}", content(n), 0o644, 0)
    assert len(names(tmp_path)) == GROUP_FILES and group.pending == []
    group.add(dir_fd, "last", b"x", 0o644, 0)
    assert "last" not in names(tmp_path) and len(group.pending) == 1
    group.wait()
    subs = []
    for n in range(GROUP_DIRS + 1):
        (tmp_path / f"d{n}").mkdir()
        subs.append(os.open(tmp_path / f"d{n}", os.O_RDONLY | os.O_DIRECTORY))
    try:
        for n, fd in enumerate(subs):
            group.add(fd, "f", content(n), 0o644, 0)
        # a directory more than a group holds: the group before it was settled first
        assert [os.listdir(tmp_path / f"d{n}") for n in range(GROUP_DIRS + 1)] == (
            [["f"]] * GROUP_DIRS + [[]])
        group.wait()
        assert all((tmp_path / f"d{n}" / "f").read_bytes() == content(n)
                   for n in range(GROUP_DIRS + 1))
    finally:
        group.close()
        for fd in subs:
            os.close(fd)


def test_a_file_that_cannot_be_made_durable_leaves_nothing_of_its_group(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f3").write_bytes(b"the old f3")
    real = os.fsync
    target = {"fd": -1}

    def full(fd: int) -> None:
        if fd == target["fd"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", full)
    group = DurableGroup()
    for n in range(6):
        group.add(dir_fd, f"f{n}", content(n), 0o644, 0)
        if n == 3:
            target["fd"] = group.pending[-1].fd
    with pytest.raises(NoSpace, match=r"while storing f3 \(nothing of it is kept"):
        group.wait()
    group.close()
    assert names(tmp_path) == ["f3"]  # no partial, no new name, the old file untouched
    assert (tmp_path / "f3").read_bytes() == b"the old f3"


def test_a_name_that_is_taken_stops_the_group_there(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / "f2").write_bytes(b"mine")
    placed: list[str] = []
    group = DurableGroup()
    for n in range(5):
        group.add(dir_fd, f"f{n}", content(n), 0o644, 0, shown=f"tree/f{n}", force=False,
                  on_placed=placed.append)
    with pytest.raises(AlreadyExists, match=r"^tree/f2 exists \(use --force"):
        group.wait()
    group.close()
    assert placed == ["f0", "f1"]
    assert names(tmp_path) == ["f0", "f1", "f2"]
    assert (tmp_path / "f2").read_bytes() == b"mine"
    # --rename takes the first free name; --force replaces, leaving no partial either way
    group = DurableGroup()
    group.add(dir_fd, "f2", b"renamed", 0o644, 0, force=False, rename=True,
              on_placed=placed.append)
    group.add(dir_fd, "f1", b"forced", 0o644, 0, force=True, on_placed=placed.append)
    (tmp_path / "dir").mkdir()
    group.add(dir_fd, "dir", b"x", 0o644, 0, force=True)
    with pytest.raises(AlreadyExists, match="dir is a directory"):
        group.wait()
    group.close()
    assert placed[2:] == ["f2 (1)", "f1"]
    assert (tmp_path / "f2 (1)").read_bytes() == b"renamed"
    assert (tmp_path / "f1").read_bytes() == b"forced"
    assert names(tmp_path) == ["dir", "f0", "f1", "f2", "f2 (1)"]


def test_a_background_failure_is_raised_by_the_next_call(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync

    def broken(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    group = DurableGroup(files=4, background=True)
    for n in range(4):
        group.add(dir_fd, f"ok{n}", content(n), 0o644, 0)
    group.wait()
    monkeypatch.setattr(os, "fsync", broken)
    for n in range(4):  # the fourth hands the group to the thread, where it fails
        group.add(dir_fd, f"bad{n}", content(n), 0o644, 0)
    with pytest.raises(RemoteError, match="cannot store bad0: Input/output error"):
        for n in range(8):
            group.add(dir_fd, f"later{n}", content(n), 0o644, 0)
    group.close()
    assert names(tmp_path) == [f"ok{n}" for n in range(4)]


def test_without_unnamed_files_partials_do_the_same(tmp_path: Path, dir_fd: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "open_unnamed", lambda fd: None)
    (tmp_path / ".f1.tether-part").write_bytes(b"a stale partial, longer than the file")
    group = DurableGroup()
    for n in range(3):
        group.add(dir_fd, f"f{n}", content(n), 0o600, T0)
    assert names(tmp_path) == [".f0.tether-part", ".f1.tether-part", ".f2.tether-part"]
    group.wait()
    assert names(tmp_path) == ["f0", "f1", "f2"]
    assert [(tmp_path / f"f{n}").read_bytes() for n in range(3)] == [content(n)
                                                                      for n in range(3)]
    group.add(dir_fd, "gone", b"x", 0o644, 0)
    group.close()  # discarded: its partial goes too
    assert names(tmp_path) == ["f0", "f1", "f2"]


class SyncfsLog:
    """A syncfs that notes the names in the watched directory when called (then syncs), and
    can be made slow."""

    def __init__(self, watched: Path, real: object, delay: float = 0.0) -> None:
        self.watched, self.real, self.delay = watched, real, delay
        self.seen: list[set[str]] = []

    def __call__(self, fd: int) -> int:
        self.seen.append(set(os.listdir(self.watched)))
        if self.delay:
            threading.Event().wait(self.delay)
        return self.real(fd)  # type: ignore[operator, no-any-return]


def test_with_syncfs_a_group_is_one_syncfs_before_its_names_which_the_next_one_covers(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real = durable._load_syncfs()  # (not syncfs_of: slow calls earlier in this process may have
    # made it give way on this file system)
    if real is None:
        pytest.skip("no syncfs here")
    log = SyncfsLog(tmp_path, real)
    monkeypatch.setattr(durable, "syncfs_of", lambda dev: log)
    fsyncs = FsyncLog(tmp_path, os.fsync)
    monkeypatch.setattr(os, "fsync", fsyncs)
    group = DurableGroup()
    for n in range(GROUP_FILES + 5):
        group.add(dir_fd, f"f{n}", content(n), 0o644, 0)
    group.wait()
    group.close()
    first = {f"f{n}" for n in range(GROUP_FILES)}
    # per group one before any of its names (its data, and the names of the group before),
    # and after the last group one more (its names)
    assert log.seen == [set(), first, first | {f"f{n}" for n in range(GROUP_FILES,
                                                                     GROUP_FILES + 5)}]
    assert fsyncs.events == []  # neither a file nor a directory fsynced on its own
    assert all((tmp_path / f"f{n}").read_bytes() == content(n) for n in range(GROUP_FILES + 5))


@pytest.mark.parametrize("then", ["close", "failing group"])
def test_names_left_for_the_next_syncfs_are_made_durable_however_the_group_ends(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """A group its bounds made settle leaves its names to the next group's syncfs; closed
    instead, or followed by a group that cannot be made durable, they are synced anyway."""
    real = durable._load_syncfs()  # (not syncfs_of: slow calls earlier in this process may have
    # made it give way on this file system)
    if real is None:
        pytest.skip("no syncfs here")
    log = SyncfsLog(tmp_path, real)
    monkeypatch.setattr(durable, "syncfs_of", lambda dev: log)
    group = DurableGroup()
    for n in range(GROUP_FILES):  # the bound: settled here, its names left for the next call
        group.add(dir_fd, f"f{n}", content(n), 0o644, 0)
    first = {f"f{n}" for n in range(GROUP_FILES)}
    assert names(tmp_path) == sorted(first) and log.seen == [set()]
    if then == "close":
        group.close()
    else:
        def broken(files: object) -> set[int]:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(durable, "make_durable", broken)
        group.add(dir_fd, "bad", b"x", 0o644, 0)
        with pytest.raises(OSError, match="Input/output error"):
            group.wait()
        group.close()
    assert log.seen == [set(), first]  # the names' own syncfs, once they were all there
    assert names(tmp_path) == sorted(first)


def test_a_syncfs_slowed_by_another_writer_gives_way_to_fsyncs(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """syncfs writes out everyone's dirty data: slow several times in a row, the groups on that
    file system fsync only their own files from then on."""
    real = durable._load_syncfs()
    if real is None:
        pytest.skip("no syncfs here")
    slow = SyncfsLog(tmp_path, real, delay=durable.SYNCFS_SLOW * GROUP_FILES * 3)
    monkeypatch.setattr(durable, "_SYNCFS", [slow])
    monkeypatch.setattr(durable, "_STRIKES", {})
    fsyncs = FsyncLog(tmp_path, os.fsync)
    monkeypatch.setattr(os, "fsync", fsyncs)
    group = DurableGroup()
    for n in range(GROUP_FILES * (durable.SYNCFS_STRIKES + 1)):
        group.add(dir_fd, f"f{n}", content(n), 0o644, 0)
    group.wait()
    group.close()
    # each slow group's data (with the names of the group before); then no more: the last
    # slow group's names, and the last group's files and names, are fsynced
    assert len(slow.seen) == durable.SYNCFS_STRIKES
    assert sum(kind == "file" for kind, _ in fsyncs.events) == GROUP_FILES  # the last group's
    assert sum(kind == "dir" for kind, _ in fsyncs.events) == 2
    assert len(names(tmp_path)) == GROUP_FILES * (durable.SYNCFS_STRIKES + 1)
