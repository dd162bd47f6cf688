"""The one errno table: every failed disk access made for a peer becomes the tether error (and
so the wire code) it stands for, with the path in a one-line message; the table is exercised with
real failures where the machine allows (a missing file, a file in the way, a symlink, a full and
a read-only file system) and whole for the rest."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tether.errors import (
    NoSpace,
    NotFound,
    PermissionDenied,
    RemoteError,
    UnsafePath,
    from_wire,
)
from tether.storage.area import FileArea
from tether.storage.errors import disk_error
from tether.storage.partial import PartialFile, part_name

from .conftest import Jail, Mount

TABLE = [
    (errno.ENOENT, NotFound, "not_found", "no such file or directory: a/b"),
    (errno.EACCES, PermissionDenied, "permission_denied", "permission denied: a/b"),
    (errno.EPERM, PermissionDenied, "permission_denied", "permission denied: a/b"),
    (errno.EROFS, PermissionDenied, "permission_denied", "read-only file system: a/b"),
    (errno.ELOOP, UnsafePath, "unsafe_path", "refusing to follow a symlink in a/b"),
    (errno.ENOTDIR, NotFound, "not_found", "not a directory: a/b"),
    (errno.ENOSPC, NoSpace, "no_space", "no space left on device: a/b"),
    (errno.EDQUOT, NoSpace, "no_space", "no space left on device: a/b"),
]


@pytest.mark.parametrize(("number", "cls", "code", "message"), TABLE)
def test_each_errno_maps_to_one_class_and_wire_code(number: int, cls: type[RemoteError],
                                                    code: str, message: str) -> None:
    exc = disk_error(OSError(number, os.strerror(number)), "a/b")
    assert type(exc) is cls and exc.code == code and str(exc) == message
    # the peer raises the same class from the code alone
    assert type(from_wire(exc.code, str(exc))) is cls


@pytest.mark.parametrize(("number", "cls", "code", "_message"), TABLE)
def test_while_writing_the_same_class_says_what_was_written(
        number: int, cls: type[RemoteError], code: str, _message: str) -> None:
    exc = disk_error(OSError(number, os.strerror(number)), "f.txt", "write")
    assert type(exc) is cls and exc.code == code
    assert "f.txt" in str(exc) and "\n" not in str(exc)
    if cls is NoSpace:  # the resume promise is part of the message
        assert str(exc) == ("no space left on device while writing f.txt (partial kept for "
                            "resume)")


def test_an_unknown_errno_is_a_plain_failure_with_the_system_reason() -> None:
    exc = disk_error(OSError(errno.EIO, os.strerror(errno.EIO)), "disk.img", "read")
    assert type(exc) is RemoteError and exc.code == "failed"
    assert str(exc) == f"cannot read disk.img: {os.strerror(errno.EIO)}"
    exc = disk_error(OSError(errno.EIO, os.strerror(errno.EIO)), "disk.img")
    assert str(exc) == f"disk.img: {os.strerror(errno.EIO)}"


def test_real_missing_file_and_file_in_the_way(jail: Jail) -> None:
    area = FileArea(jail.root, confined=True)
    with pytest.raises(NotFound, match=r"^no such file or directory: nope\.txt$") as missing:
        area.open_source("nope.txt")
    assert missing.value.code == "not_found"
    (jail.root / "plain").write_bytes(b"x")
    with pytest.raises(NotFound, match="not a directory: plain/x"):
        area.open_source("plain/x")


def test_real_symlink_in_a_confined_path(jail: Jail) -> None:
    (jail.root / "up").symlink_to(jail.outside)
    with pytest.raises(UnsafePath, match="symlink 'up'") as refused:
        FileArea(jail.root, confined=True).open_source("up/secret.txt")
    assert refused.value.code == "unsafe_path"


def test_real_full_disk_keeps_the_partial(mount_tmpfs: Mount) -> None:
    small = mount_tmpfs("small", size="64k")
    fd = os.open(small, os.O_RDONLY | os.O_DIRECTORY)
    partial = PartialFile(fd, "big.bin", resume=False, owns_dir=True)
    try:
        with pytest.raises(NoSpace) as full:
            partial.write(b"\xaa" * (1 << 20))
        assert full.value.code == "no_space"
        assert str(full.value) == ("no space left on device while writing big.bin (partial "
                                   "kept for resume)")
    finally:
        partial.close()
    assert os.listdir(small) == [part_name("big.bin")]  # kept, for a resume once there is room
    assert (small / part_name("big.bin")).stat().st_size > 0


def test_real_read_only_file_system(mount_tmpfs: Mount) -> None:
    ro = mount_tmpfs("ro", read_only=True)
    area = FileArea(ro, confined=True)
    with pytest.raises(PermissionDenied, match="read-only file system") as refused:
        area.open_put(".", "f.txt", exists_ok=False, resume=False)
    assert refused.value.code == "permission_denied"
    with pytest.raises(PermissionDenied, match="read-only file system"):
        area.make_dir(".", "d", 0o755)
    assert os.listdir(ro) == []


def test_an_os_error_reaching_the_session_goes_through_the_same_table(tmp_path: Path) -> None:
    """What a stray OSError ends a stream with (server/session.py) is the table's answer."""
    from tether.server.session import _as_remote

    try:
        os.stat(tmp_path / "gone")
    except OSError as exc:
        stray = exc
    mapped = _as_remote(stray)
    assert type(mapped) is NotFound and str(tmp_path / "gone") in str(mapped)
