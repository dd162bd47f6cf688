"""Partial files and batch stores, with real files: a partial is reused (resume) only for the
prefix it really holds, the final name only ever holds a complete, verified file, a second
writer is refused, moves never clobber unless asked, and a batch stores each verified file and
reports the others, leaving no partial behind."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from support import store_whole
from tether.errors import AlreadyExists, BadRequest, Busy, IntegrityError, SourceChanged
from tether.storage.area import BatchFiles, FileArea
from tether.storage.batch import BatchReceiver, DirCache, Target
from tether.storage.names import enter_dir
from tether.storage.partial import PartialFile, part_name
from tether.storage.source import digest, file_hash, new_hasher

MiB = 1024 * 1024
T0 = 1_600_000_000_000_000_000


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def dir_fd(tmp_path: Path) -> int:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd  # type: ignore[misc]
    os.close(fd)


def test_a_kept_partial_is_resumed_from_what_it_holds(tmp_path: Path, dir_fd: int) -> None:
    data = _data(3 * MiB + 17, 1)
    first = PartialFile(dir_fd, "f.bin", resume=True)
    first.write(data[: 2 * MiB])
    first.close()  # interrupted: the partial stays
    assert (tmp_path / part_name("f.bin")).stat().st_size == 2 * MiB
    assert not (tmp_path / "f.bin").exists()

    again = PartialFile(dir_fd, "f.bin", resume=True)
    try:
        hasher = new_hasher()
        hasher.update(data[: 2 * MiB])
        assert again.offset == again.written == 2 * MiB
        assert again.prefix_hash == digest(hasher)  # what the sender checks its own prefix by
        again.write(data[2 * MiB:])
        assert again.commit(file_hash(data), 0o640, T0, force=False, rename=False) == "f.bin"
    finally:
        again.close()
    st = (tmp_path / "f.bin").stat()
    assert (tmp_path / "f.bin").read_bytes() == data
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, T0)
    assert os.listdir(tmp_path) == ["f.bin"]


def test_without_resume_or_after_restart_the_prefix_is_dropped(tmp_path: Path,
                                                                dir_fd: int) -> None:
    old = PartialFile(dir_fd, "f.bin", resume=False)
    old.write(b"stale prefix")
    old.close()
    fresh = PartialFile(dir_fd, "f.bin", resume=False)
    assert (fresh.offset, fresh.prefix_hash) == (0, None)
    assert (tmp_path / part_name("f.bin")).stat().st_size == 0
    fresh.write(b"abc")
    fresh.close()
    kept = PartialFile(dir_fd, "f.bin", resume=True)
    assert kept.offset == 3
    kept.restart()  # the source changed: its prefix is no longer ours
    kept.write(b"xyz!")
    assert kept.commit(file_hash(b"xyz!"), None, None, force=False, rename=False) == "f.bin"
    kept.close()
    assert (tmp_path / "f.bin").read_bytes() == b"xyz!"


def test_a_hash_mismatch_stores_nothing(tmp_path: Path, dir_fd: int) -> None:
    partial = PartialFile(dir_fd, "f.bin", resume=False)
    partial.write(b"what arrived")
    with pytest.raises(IntegrityError, match="nothing was stored"):
        partial.commit(file_hash(b"what was sent"), None, None, force=True, rename=False)
    partial.close()
    assert os.listdir(tmp_path) == []


def test_a_second_writer_is_refused(dir_fd: int) -> None:
    first = PartialFile(dir_fd, "f.bin", resume=True)
    try:
        with pytest.raises(Busy, match=r"another transfer is writing f\.bin"):
            PartialFile(dir_fd, "f.bin", resume=True)
    finally:
        first.close()
    PartialFile(dir_fd, "f.bin", resume=True).discard()  # free again once the first let go


def _store(dir_fd: int, data: bytes, *, force: bool = False, rename: bool = False) -> str:
    return store_whole(dir_fd, "r.txt", data, 0o644, 0, force=force, rename=rename)


def test_moves_never_clobber_unless_asked(tmp_path: Path, dir_fd: int) -> None:
    assert _store(dir_fd, b"one") == "r.txt"
    with pytest.raises(AlreadyExists, match="use --force"):
        _store(dir_fd, b"two")
    assert _store(dir_fd, b"two", rename=True) == "r (1).txt"
    assert _store(dir_fd, b"three", rename=True) == "r (2).txt"
    assert _store(dir_fd, b"four", force=True) == "r.txt"
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == {
        "r.txt": b"four", "r (1).txt": b"two", "r (2).txt": b"three"}
    (tmp_path / "dir").mkdir()
    with pytest.raises(AlreadyExists, match="is a directory"):
        store_whole(dir_fd, "dir", b"x", 0o644, 0, force=True, rename=False)
    assert not any(n.endswith(".tether-part") for n in os.listdir(tmp_path))


def test_an_existing_destination_or_directory_is_refused_by_the_area(tmp_path: Path) -> None:
    (tmp_path / "taken.txt").write_bytes(b"mine")
    (tmp_path / "sub").mkdir()
    area = FileArea(tmp_path, confined=True)
    with pytest.raises(AlreadyExists, match="exists"):
        area.open_put(".", "taken.txt", exists_ok=False, resume=False)
    with pytest.raises(AlreadyExists, match="sub is a directory"):
        area.open_put(".", "sub", exists_ok=True, resume=False)
    assert (tmp_path / "taken.txt").read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == ["sub", "taken.txt"]  # no partial left either


def _batch(area: FileArea, files: dict[str, bytes], corrupt: set[str] = frozenset(),
           ) -> tuple[BatchReceiver, list[str]]:
    names = list(files)
    hashes = [file_hash(b"not this" if n in corrupt else files[n]) for n in names]
    stored: list[str] = []
    receiver = area.store_batch(
        ".", BatchFiles(names, [len(files[n]) for n in names], [0o600] * len(names),
                        [T0] * len(names), hashes),
        force=False, rename=False, on_stored=lambda target, final: stored.append(final))
    return receiver, stored


def test_a_batch_stores_each_verified_file_fed_in_any_pieces(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    files = {"one.txt": b"1" * 1000, "a/empty": b"", "a/two.txt": _data(70_000, 2),
             "three": b"3"}
    blob = b"".join(files.values())
    for step in (1, 7, 4096, len(blob)):
        for name in files:
            (tmp_path / name).unlink(missing_ok=True)
        receiver, stored = _batch(FileArea(tmp_path, confined=True), files)
        try:
            for at in range(0, len(blob), step):
                receiver.feed(blob[at:at + step])
            assert receiver.complete
            receiver.finish()
        finally:
            receiver.close()
        assert sorted(stored) == sorted(n.rsplit("/", 1)[-1] for n in files)
        for name, data in files.items():
            assert (tmp_path / name).read_bytes() == data
            assert (tmp_path / name).stat().st_mtime_ns == T0
    assert sorted(os.listdir(tmp_path)) == ["a", "one.txt", "three"]


def test_a_batch_reports_a_corrupt_file_and_keeps_the_rest(tmp_path: Path) -> None:
    files = {"good": b"good", "bad": b"bad!", "also good": b"fine"}
    receiver, _ = _batch(FileArea(tmp_path, confined=True), files, corrupt={"bad"})
    try:
        receiver.feed(b"".join(files.values()))
        with pytest.raises(IntegrityError, match=r"^bad: data does not match"):
            receiver.finish()
    finally:
        receiver.close()
    assert sorted(os.listdir(tmp_path)) == ["also good", "good"]  # no partial of "bad"
    with pytest.raises(BadRequest, match="more data than"):
        _batch(FileArea(tmp_path, confined=True), {"x": b"x"})[0].feed(b"xy")


def test_the_client_side_receiver_refuses_a_server_sending_too_much(tmp_path: Path,
                                                                     dir_fd: int) -> None:
    (tmp_path / "d").mkdir()
    dirs = DirCache(os.dup(dir_fd), enter_dir)
    fd, last = dirs.place("d/f")
    receiver = BatchReceiver([Target(fd, last, "d/f", 2, 0o600, 0, file_hash(b"ok"))],
                             force=False, rename=False, on_stored=lambda *_: None,
                             too_much=SourceChanged, dirs=dirs)
    try:
        with pytest.raises(SourceChanged):
            receiver.feed(b"ok and more")
    finally:
        receiver.close()
    assert dirs.fds == {} and os.listdir(tmp_path / "d") == []
