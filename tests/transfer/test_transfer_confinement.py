"""Server-side safety: a client authorized with ``root=DIR`` and only ``put,get`` can neither run
commands nor read or write outside DIR — not with ``..``, absolute paths, symlinks pointing out
(as a path component, as the final name, as the partial's name, or swapped in while it works),
device files or FIFOs — and a client lacking ``get`` or ``put`` cannot do that either.

Every refusal is checked for its error class, for "nothing outside DIR changed", and for the
connection still working afterwards.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tether
from tether.errors import AlreadyExists, PermissionDenied, RemoteError, UnsafePath

from .conftest import RigFactory
from .helpers import ClientSpec, Rig, listing, make_file

SECRET = b"outside secret\n"


@dataclass
class Jail:
    rig: Rig
    conn: tether.Connection
    dir: Path  # the client's root
    outside: Path  # a sibling directory it must never reach
    local: Path  # the client's own files

    def outside_unchanged(self) -> bool:
        return listing(self.outside) == ["secret.txt"] and (
            self.outside / "secret.txt").read_bytes() == SECRET

    async def still_works(self) -> None:
        src = make_file(self.local / "ok.txt", 10, seed=7)
        await self.conn.put(src, "ok.txt", force=True)
        assert (self.dir / "ok.txt").read_bytes() == src.read_bytes()
        await self.conn.get("ok.txt", self.local / "ok back.txt", force=True)


@pytest.fixture
async def jail(make_rig: RigFactory, work: Path) -> AsyncIterator[Jail]:
    jail_dir = work / "jail"
    outside = work / "outside"
    for path in (jail_dir, outside, work / "local"):
        path.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    spec = ClientSpec("jailed", root=str(jail_dir), permissions=frozenset({"put", "get"}))
    rig = await make_rig(root=work / "server-root", clients=[spec])
    async with rig.connect(spec.home) as conn:
        yield Jail(rig, conn, jail_dir, outside, work / "local")


async def test_exec_and_shell_are_refused(jail: Jail) -> None:
    with pytest.raises(PermissionDenied, match="may not run commands"):
        await jail.conn.run(["touch", str(jail.outside / "pwned")])
    with pytest.raises(PermissionDenied):
        await jail.conn.run("echo hi")
    assert jail.outside_unchanged()
    await jail.still_works()


ESCAPING = ["../outside/x", "../x", "sub/../../x", "..", "../", "./../x", "a/./../../x"]


@pytest.mark.parametrize("remote", ESCAPING)
async def test_put_with_dotdot_is_refused(jail: Jail, remote: str) -> None:
    src = make_file(jail.local / "x", 100)
    (jail.dir / "sub").mkdir(exist_ok=True)
    with pytest.raises(UnsafePath):
        await jail.conn.put(src, remote)
    assert jail.outside_unchanged()
    assert not (jail.dir.parent / "x").exists()
    await jail.still_works()


@pytest.mark.parametrize("absolute", ["{outside}/x", "{outside}/", "{outside}/secret.txt",
                                      "/tmp/tether-should-not-exist", "/"])
async def test_put_to_an_absolute_path_is_refused(jail: Jail, absolute: str) -> None:
    remote = absolute.format(outside=jail.outside)
    src = make_file(jail.local / "x", 100)
    with pytest.raises(UnsafePath, match="outside this client's root"):
        await jail.conn.put(src, remote, force=True)
    assert jail.outside_unchanged()
    assert not Path("/tmp/tether-should-not-exist").exists()
    await jail.still_works()


@pytest.mark.parametrize("remote", ["../outside/secret.txt", "{outside}/secret.txt",
                                    "/etc/passwd", "sub/../../outside/secret.txt", "/"])
@pytest.mark.parametrize("recursive", [False, True])
async def test_get_outside_is_refused(jail: Jail, remote: str, recursive: bool) -> None:
    (jail.dir / "sub").mkdir(exist_ok=True)
    remote = remote.format(outside=jail.outside)
    with pytest.raises(UnsafePath):
        await jail.conn.get(remote, jail.local / "got", recursive=recursive)
    assert listing(jail.local) == []
    await jail.still_works()


async def test_symlink_out_as_a_path_component(jail: Jail) -> None:
    os.symlink(jail.outside, jail.dir / "out")
    os.symlink("../outside", jail.dir / "rel out")
    src = make_file(jail.local / "x", 100)
    for remote in ("out/x", "out/", "out/secret.txt", "rel out/x", "rel out/new dir/x"):
        with pytest.raises(UnsafePath, match="symlink"):
            await jail.conn.put(src, remote, force=True)
    for remote in ("out/secret.txt", "rel out/secret.txt"):
        with pytest.raises(UnsafePath):
            await jail.conn.get(remote, jail.local / "got")
        with pytest.raises(UnsafePath):
            await jail.conn.get(remote, jail.local / "got", recursive=True)
    for remote in ("out", "out/", "rel out"):  # a recursive get of the link itself
        with pytest.raises(UnsafePath):
            await jail.conn.get(remote, jail.local / "tree", recursive=True)
    tree = jail.local / "tree src"
    make_file(tree / "f", 5)
    with pytest.raises(UnsafePath):
        await jail.conn.put(tree, "out/", recursive=True)
    assert jail.outside_unchanged()
    assert listing(jail.local) == ["tree src", "tree src/f", "x"]
    await jail.still_works()


async def test_symlink_out_as_the_final_name(jail: Jail) -> None:
    os.symlink(jail.outside / "secret.txt", jail.dir / "evil")
    os.symlink(jail.outside, jail.dir / "evil dir")
    src = make_file(jail.local / "x", 100)
    with pytest.raises(AlreadyExists):
        await jail.conn.put(src, "evil")
    with pytest.raises(AlreadyExists):
        await jail.conn.put(src, "evil dir")  # a link to a directory is not a directory here
    with pytest.raises(UnsafePath):
        await jail.conn.get("evil", jail.local / "got")
    with pytest.raises(UnsafePath):
        await jail.conn.get("evil dir", jail.local / "got", recursive=True)
    # replacing the name may replace the link itself, never write through it
    await jail.conn.put(src, "evil", force=True)
    assert jail.outside_unchanged()
    assert not (jail.dir / "evil").is_symlink()
    assert (jail.dir / "evil").read_bytes() == src.read_bytes()
    assert not (jail.local / "got").exists()
    await jail.still_works()


async def test_symlink_out_as_the_partial_name(jail: Jail) -> None:
    """A planted ``.NAME.tether-part`` link must not lead the partial's writes outside."""
    os.symlink(jail.outside / "secret.txt", jail.dir / ".big.tether-part")
    src = make_file(jail.local / "big", 2 * 1024 * 1024)
    with pytest.raises(RemoteError):
        await jail.conn.put(src, "big")
    assert jail.outside_unchanged()
    assert not (jail.dir / "big").exists()
    await jail.still_works()


async def test_device_files_and_fifos_are_refused(jail: Jail) -> None:
    devs = jail.dir / "devs"
    devs.mkdir()
    os.mkfifo(devs / "fifo")
    os.symlink("/dev/null", jail.dir / "null link")
    os.symlink("/dev/zero", jail.dir / "zero link")
    names = ["devs/fifo", "null link", "zero link"]
    try:
        os.mknod(devs / "zero node", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        names.append("devs/zero node")
    except OSError:  # not root, or a nodev mount
        pass
    for name in names:
        with pytest.raises(UnsafePath):
            await asyncio.wait_for(jail.conn.get(name, jail.local / "got"), 20)
        with pytest.raises(UnsafePath):
            await asyncio.wait_for(jail.conn.get(name, jail.local / "got", recursive=True), 20)
    src = make_file(jail.local / "x", 100)
    for name in names:
        with pytest.raises(AlreadyExists):
            await asyncio.wait_for(jail.conn.put(src, name), 20)
    # a recursive get of the directory holding them copies neither the FIFO nor the device
    make_file(devs / "regular", 5)
    await asyncio.wait_for(jail.conn.get("devs", jail.local / "all", recursive=True), 20)
    assert listing(jail.local / "all") == ["regular"]
    assert not (jail.local / "got").exists()
    await jail.still_works()


async def test_a_forced_put_onto_a_fifo_writes_nothing_into_it(jail: Jail) -> None:
    fifo = jail.dir / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        src = make_file(jail.local / "x", 1000)
        await asyncio.wait_for(jail.conn.put(src, "fifo", force=True), 20)
        try:
            leaked = os.read(reader, 4096)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
    finally:
        os.close(reader)
    assert not stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the name now holds the uploaded file
    await jail.still_works()


@pytest.mark.parametrize("target", ["/etc", "/tmp/x", "../../../outside", "../../..",
                                    "sub/../../../x"])
async def test_a_symlink_put_that_leaves_the_root_is_refused(jail: Jail, target: str) -> None:
    tree = jail.local / "tree"
    make_file(tree / "a" / "f", 3)
    os.symlink(target, tree / "a" / "escape")
    with pytest.raises(UnsafePath, match="outside this client's root"):
        await jail.conn.put(tree, "tree", recursive=True)
    assert not (jail.dir / "tree" / "a" / "escape").is_symlink()
    assert links_escaping(jail.dir) == []
    assert jail.outside_unchanged()
    await jail.still_works()


async def test_a_symlink_through_an_in_tree_link_cannot_climb_out(jail: Jail) -> None:
    """``d/e/up -> ../..`` is the root itself (allowed); ``esc -> d/e/up/../outside`` looks
    inside to ``normpath`` but the kernel resolves ``up`` first and climbs out of the root."""
    tree = jail.local / "tree"
    (tree / "d" / "e").mkdir(parents=True)
    os.symlink("../../..", tree / "d" / "e" / "up")  # tree/d/e -> the jail's root
    os.symlink("d/e/up/../outside", tree / "esc")
    with pytest.raises(UnsafePath, match="outside this client's root"):
        await jail.conn.put(tree, "tree", recursive=True)
    assert links_escaping(jail.dir) == []
    assert jail.outside_unchanged()
    await jail.still_works()


def links_escaping(root: Path) -> list[str]:
    """Symlinks below ``root`` whose kernel resolution leaves it."""
    real_root = os.path.realpath(root)
    return [
        f"{p} -> {os.readlink(p)}" for p in root.rglob("*")
        if p.is_symlink() and os.path.commonpath(
            [real_root, os.path.realpath(p)]) != real_root
    ]


async def test_a_symlink_put_that_stays_inside_is_kept(jail: Jail) -> None:
    tree = jail.local / "tree"
    make_file(tree / "a" / "f", 3)
    os.symlink("../a/f", tree / "a" / "inside")
    os.symlink("../..", tree / "a" / "to the root")  # the jail's root itself: still inside
    await jail.conn.put(tree, "tree", recursive=True)
    assert os.readlink(jail.dir / "tree" / "a" / "inside") == "../a/f"
    assert os.readlink(jail.dir / "tree" / "a" / "to the root") == "../.."
    assert links_escaping(jail.dir) == []


async def test_a_symlink_swapped_in_while_working_never_leads_out(jail: Jail) -> None:
    """A thread swaps ``sub`` between a real directory and a link to OUTSIDE while the client
    puts into and gets from ``sub``: every operation either works inside the jail or is
    refused; none reads or writes OUTSIDE (O_NOFOLLOW, directory-fd-relative walks)."""
    (jail.dir / "real").mkdir()
    (jail.dir / "real" / "secret.txt").write_bytes(b"inside\n")
    os.symlink(jail.outside, jail.dir / "link")
    os.rename(jail.dir / "real", jail.dir / "sub")
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():  # sub is a dir / a link, alternately, atomically renamed
            os.rename(jail.dir / "sub", jail.dir / "real")
            os.rename(jail.dir / "link", jail.dir / "sub")
            os.rename(jail.dir / "sub", jail.dir / "link")
            os.rename(jail.dir / "real", jail.dir / "sub")
            swaps[0] += 1

    src = make_file(jail.local / "payload", 3000)
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    outcomes = {"ok": 0, "refused": 0}
    try:
        for i in range(150):
            for op in ("put", "get"):
                try:
                    if op == "put":
                        await jail.conn.put(src, f"sub/f{i}")
                    else:
                        await jail.conn.get("sub/secret.txt", jail.local / "got", force=True)
                        assert (jail.local / "got").read_bytes() == b"inside\n"
                    outcomes["ok"] += 1
                except (UnsafePath, RemoteError):
                    outcomes["refused"] += 1
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 0
    assert jail.outside_unchanged()
    assert outcomes["ok"] > 0


@pytest.mark.parametrize(("perms", "allowed"), [({"put"}, "put"), ({"get"}, "get"),
                                                 (set(), None)])
async def test_a_client_without_a_permission_is_refused(make_rig: RigFactory, work: Path,
                                                        perms: set[str],
                                                        allowed: str | None) -> None:
    spec = ClientSpec("limited", permissions=frozenset(perms))
    rig = await make_rig(root=work / "root", clients=[spec])
    make_file(rig.root / "there.txt", 10)
    make_file(rig.root / "tree" / "f", 10)
    src = make_file(work / "local" / "mine.txt", 10)
    src_tree = work / "local" / "mytree"
    make_file(src_tree / "g", 1)
    async with rig.connect(spec.home) as conn:
        if allowed == "put":
            await conn.put(src, "mine.txt")
        else:
            with pytest.raises(PermissionDenied, match="may not upload files"):
                await conn.put(src, "mine.txt")
            with pytest.raises(PermissionDenied):
                await conn.put(src_tree, "mytree", recursive=True)
            assert not (rig.root / "mine.txt").exists()
            assert not (rig.root / "mytree").exists()
        if allowed == "get":
            await conn.get("there.txt", work / "got")
        else:
            with pytest.raises(PermissionDenied, match="may not download files"):
                await conn.get("there.txt", work / "got")
            with pytest.raises(PermissionDenied):
                await conn.get("tree", work / "gottree", recursive=True)
            assert not (work / "got").exists()
            assert not (work / "gottree").exists()
        with pytest.raises(PermissionDenied):
            await conn.run("true")
        assert sorted(conn.server.permissions) == sorted(perms)
