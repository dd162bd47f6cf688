"""Confinement, with real files: a confined client's file area never opens, writes, lists or
links anything outside its root, whatever the names (absolute, '..', NUL, lone surrogates,
backslashes) and whatever symlinks lie in the way, including one swapped in while it works.
Every refusal is a RemoteError (one stream fails, not the connection) and leaves the sibling
directory outside the root untouched."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable

import pytest

from tether.errors import AlreadyExists, RemoteError, UnsafePath
from tether.storage.area import BatchFiles, FileArea
from tether.storage.names import check_name, link_stays_inside, name_parts
from tether.storage.partial import part_name
from tether.storage.source import file_hash

from .conftest import Jail

HOSTILE_PATHS = [
    "/etc/passwd",
    "../outside/secret.txt",
    "a/../../outside/secret.txt",
    "./../outside",
    "up/secret.txt",  # up -> ../outside
    "link.txt/x",  # link.txt -> ../outside/secret.txt
    "deep/up/secret.txt",  # deep/up -> ../../outside
    "x\0y",
    "\ud800.txt",
]


def _plant(jail: Jail) -> None:
    (jail.root / "up").symlink_to("../outside")
    (jail.root / "link.txt").symlink_to("../outside/secret.txt")
    (jail.root / "deep").mkdir()
    (jail.root / "deep" / "up").symlink_to("../../outside")


def _refused(call: Callable[[], object]) -> RemoteError:
    with pytest.raises(RemoteError) as refused:
        result = call()
        if hasattr(result, "__next__"):  # a walk refuses when it is walked
            list(result)  # type: ignore[call-overload]
    return refused.value


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_every_entry_point_refuses_a_hostile_path(jail: Jail, path: str) -> None:
    _plant(jail)
    area = FileArea(jail.root, confined=True)
    _refused(lambda: area.open_source(path))
    _refused(lambda: area.walk(path))
    _refused(lambda: area.open_put(path, "new.txt", exists_ok=True, resume=True))
    _refused(lambda: area.make_dir(path, "newdir", 0o755))
    _refused(lambda: area.make_symlink(path, "new.lnk", "x", True))
    _refused(lambda: area.read_batch(path, ["secret.txt"]))
    files = BatchFiles(["f"], [1], [0o644], [0], [file_hash(b"z")])
    _refused(lambda: area.store_batch(path, files, force=True, rename=False,
                                      on_stored=lambda *_: None))
    assert jail.outside_unchanged()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\0b", "\udc80",
                                  "../secret.txt"])
def test_a_hostile_name_is_refused_before_any_write(jail: Jail, name: str) -> None:
    with pytest.raises(UnsafePath):
        check_name(name)
    area = FileArea(jail.root, confined=True)
    with pytest.raises(UnsafePath):
        area.open_put(".", name, exists_ok=True, resume=False)
    files = BatchFiles([f"ok/{name}"], [1], [0o644], [0], [file_hash(b"z")])
    (jail.root / "ok").mkdir()
    with pytest.raises(RemoteError):  # ("ok/a/b" is a fine name, of a directory not there)
        area.store_batch(".", files, force=True, rename=False, on_stored=lambda *_: None)
    assert os.listdir(jail.root) == ["ok"] and os.listdir(jail.root / "ok") == []
    assert jail.outside_unchanged()


@pytest.mark.parametrize(("depth", "target", "inside"), [
    (0, "a", True), (0, "../a", False), (1, "../a", True), (1, "../../a", False),
    (2, "x/../../a", False), (3, "../../a/b", True), (0, "/etc", False), (0, "", False),
    (0, "a\0b", False), (1, "./.././a", True),
])
def test_link_targets(depth: int, target: str, inside: bool) -> None:
    assert link_stays_inside(depth, target) is inside


def test_batch_names_are_plain_components() -> None:
    assert name_parts("a/b/c.txt") == ["a", "b", "c.txt"]
    for bad in ("a//b", "/a", "a/", "a/../b", "a/./b"):
        with pytest.raises(UnsafePath):
            name_parts(bad)


def test_a_symlink_as_the_final_name_is_read_as_itself_never_through(jail: Jail) -> None:
    _plant(jail)
    area = FileArea(jail.root, confined=True)
    with pytest.raises(UnsafePath, match=r"symlink 'link\.txt'"):
        area.open_source("link.txt")
    with pytest.raises(UnsafePath):
        area.read_batch(".", ["link.txt"])
    (entry,) = area.walk("link.txt")  # listed as the link it is
    assert (entry.kind, entry.target) == ("symlink", "../outside/secret.txt")
    assert jail.outside_unchanged()


def test_a_confined_symlink_may_not_point_out(jail: Jail) -> None:
    area = FileArea(jail.root, confined=True)
    (jail.root / "sub").mkdir()
    assert area.make_symlink("sub", "ok", "../sibling", False) == "sub/ok"
    with pytest.raises(UnsafePath, match="outside this client's root"):
        area.make_symlink("sub", "out", "../../outside/secret.txt", False)
    with pytest.raises(UnsafePath, match="outside this client's root"):
        area.make_symlink(".", "abs", "/etc/passwd", False)
    assert os.readlink(jail.root / "sub" / "ok") == "../sibling"
    assert sorted(os.listdir(jail.root / "sub")) == ["ok"]


def test_the_partial_name_as_a_symlink_is_not_followed(jail: Jail) -> None:
    (jail.root / part_name("f.txt")).symlink_to(jail.outside / "secret.txt")
    area = FileArea(jail.root, confined=True)
    with pytest.raises(RemoteError):
        area.open_put(".", "f.txt", exists_ok=True, resume=True)
    assert jail.outside_unchanged()


def test_the_final_name_as_a_symlink_is_replaced_not_followed(jail: Jail) -> None:
    (jail.root / "f.txt").symlink_to(jail.outside / "secret.txt")
    area = FileArea(jail.root, confined=True)
    partial, shown = area.open_put(".", "f.txt", exists_ok=True, resume=False)
    try:
        partial.write(b"new")
        assert partial.commit(file_hash(b"new"), 0o644, None, force=True, rename=False) == "f.txt"
    finally:
        partial.close()
    assert shown == "f.txt" and not (jail.root / "f.txt").is_symlink()
    assert (jail.root / "f.txt").read_bytes() == b"new" and jail.outside_unchanged()


def test_a_fifo_or_device_is_never_read(jail: Jail) -> None:
    os.mkfifo(jail.root / "pipe")
    area = FileArea(jail.root, confined=True)
    with pytest.raises(UnsafePath, match="not a regular file"):
        area.open_source("pipe")  # O_NONBLOCK: returns at once instead of hanging
    with pytest.raises(UnsafePath, match="not a regular file"):
        area.read_batch(".", ["pipe"])
    unconfined = FileArea(jail.root, confined=False)
    with pytest.raises(UnsafePath, match="not a regular file"):
        unconfined.open_source("/dev/zero")


def test_an_unconfined_client_may_use_absolute_paths(jail: Jail) -> None:
    source = FileArea(jail.root, confined=False).open_source(str(jail.outside / "secret.txt"))
    try:
        assert b"".join(source.chunks(0)) == b"outside secret\n"
    finally:
        source.close()


def test_a_directory_swapped_for_a_symlink_while_writing_leads_nowhere(jail: Jail) -> None:
    """A thread keeps replacing ``d`` (a directory) with a symlink to the outside and back,
    while puts, gets and listings of ``d/...`` run: each either works inside the root or is
    refused; nothing outside is ever written, and no read returns the secret."""
    d, parked = jail.root / "d", jail.root / "parked"
    d.mkdir()
    (d / "inside.txt").write_bytes(b"inside")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # each state held a moment, so both are met
                os.rename(d, parked)
                os.symlink(jail.outside, d)
                time.sleep(0.0003)
                os.unlink(d)
                os.rename(parked, d)
                time.sleep(0.0003)

    area = FileArea(jail.root, confined=True)
    swapper = threading.Thread(target=swap)
    swapper.start()
    stored = read = i = 0
    try:
        # 400 rounds, and on until the race has run both ways (a loaded machine can let one
        # state win many rounds in a row)
        while i < 400 or (not (stored and read) and i < 40_000):
            i += 1
            try:
                partial, _ = area.open_put("d/", f"f{i}.txt", exists_ok=True, resume=False)
                try:
                    partial.write(b"payload")
                    partial.commit(file_hash(b"payload"), 0o644, None, force=True,
                                   rename=False)
                    stored += 1
                finally:
                    partial.close()
            except RemoteError:
                pass
            try:
                source = area.open_source("d/secret.txt")
            except RemoteError:
                pass
            else:
                source.close()
                pytest.fail("the secret was opened through the swapped-in symlink")
            with contextlib.suppress(RemoteError):
                assert area.read_batch("d", ["inside.txt"])[0][0] == b"inside"
                read += 1
    finally:
        stop.set()
        swapper.join()
    if not d.exists():
        os.rename(parked, d)
    elif d.is_symlink():
        os.unlink(d)
        os.rename(parked, d)
    assert jail.outside_unchanged()
    assert stored > 0 and read > 0  # the race ran both ways
    assert len([n for n in os.listdir(d) if n.endswith(".txt")]) == stored + 1
    shutil.rmtree(d)
    with pytest.raises(AlreadyExists):  # sanity: the area still works after the storm
        (jail.root / "e").mkdir()
        area.open_put(".", "e", exists_ok=True, resume=False)
