"""scp's conventions, through the API and the CLI: a directory destination receives files by
name, several sources need a directory, an existing destination is refused unless --force
(replace) or --rename (``name (1).ext``), and a directory without -r is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tether
from tether.errors import AlreadyExists, BadRequest, NotFound, RemoteError

from .helpers import HOST, Identities, Rig, arun_cli, make_file


async def test_put_into_a_directory_keeps_the_name(api: tether.Connection, rig: Rig,
                                                   work: Path) -> None:
    src = make_file(work / "report.txt", 100)
    (rig.root / "inbox").mkdir()
    put = await api.put(src, "inbox")
    assert (rig.root / "inbox" / "report.txt").read_bytes() == src.read_bytes()
    assert put.files[0].path == "inbox/report.txt"
    (rig.root / "inbox" / "sub").mkdir()
    await api.put(src, "inbox/sub/")  # a trailing slash too
    assert (rig.root / "inbox" / "sub" / "report.txt").read_bytes() == src.read_bytes()
    await api.put(src, "inbox/renamed.txt")  # not a directory: the path itself
    assert (rig.root / "inbox" / "renamed.txt").read_bytes() == src.read_bytes()


async def test_put_to_a_missing_directory_with_a_slash_is_not_found(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    src = make_file(work / "f", 10)
    with pytest.raises(NotFound):
        await api.put(src, "no such dir/")
    assert not (rig.root / "no such dir").exists()


async def test_get_into_a_directory_keeps_the_name(api: tether.Connection, rig: Rig,
                                                   work: Path) -> None:
    make_file(rig.root / "dir" / "data.csv", 321)
    (work / "here").mkdir()
    got = await api.get("dir/data.csv", work / "here")
    assert (work / "here" / "data.csv").read_bytes() == (rig.root / "dir" / "data.csv").read_bytes()
    assert got.files[0].path == str(work / "here" / "data.csv")
    await api.get("dir/data.csv", work / "here" / "other name.csv")
    assert (work / "here" / "other name.csv").stat().st_size == 321


async def test_several_sources_into_a_directory(api: tether.Connection, rig: Rig,
                                                work: Path) -> None:
    sources = [make_file(work / f"s{i}.bin", 1000 + i, seed=i) for i in range(3)]
    (rig.root / "many").mkdir()
    put = await api.put(sources, "many")  # no trailing slash: it is a directory
    assert sorted(p.name for p in (rig.root / "many").iterdir()) == ["s0.bin", "s1.bin",
                                                                      "s2.bin"]
    assert len(put.files) == 3
    (work / "down").mkdir()
    await api.get(["many/s0.bin", "many/s2.bin"], work / "down")
    assert sorted(p.name for p in (work / "down").iterdir()) == ["s0.bin", "s2.bin"]
    assert (work / "down" / "s2.bin").read_bytes() == sources[2].read_bytes()


async def test_several_sources_need_a_directory(api: tether.Connection, rig: Rig,
                                                work: Path) -> None:
    sources = [make_file(work / f"s{i}", 10) for i in range(2)]
    make_file(rig.root / "plain file", 5)
    with pytest.raises(RemoteError):
        await api.put(sources, "plain file")
    assert (rig.root / "plain file").stat().st_size == 5
    make_file(rig.root / "r1", 1)
    make_file(rig.root / "r2", 1)
    with pytest.raises(NotFound, match="not a directory"):
        await api.get(["r1", "r2"], work / "not a dir")
    assert not (work / "not a dir").exists()


async def test_existing_destination_refused_then_force_then_rename(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    old = make_file(rig.root / "report.txt", 10, seed=1)
    old_bytes = old.read_bytes()
    src = make_file(work / "report.txt", 20, seed=2)

    with pytest.raises(AlreadyExists, match="--force"):
        await api.put(src, "report.txt")
    assert old.read_bytes() == old_bytes
    assert [p.name for p in rig.root.iterdir()] == ["report.txt"]  # no partial left either

    put = await api.put(src, "report.txt", rename=True)
    assert put.files[0].path == "report (1).txt"
    assert (rig.root / "report (1).txt").read_bytes() == src.read_bytes()
    put = await api.put(src, "report.txt", rename=True)
    assert put.files[0].path == "report (2).txt"
    assert old.read_bytes() == old_bytes

    await api.put(src, "report.txt", force=True)
    assert old.read_bytes() == src.read_bytes()


async def test_get_existing_destination_refused_then_force_then_rename(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    make_file(rig.root / "archive.tar.gz", 50, seed=3)
    local = make_file(work / "archive.tar.gz", 7, seed=4)
    before = local.read_bytes()
    with pytest.raises(AlreadyExists):
        await api.get("archive.tar.gz", local)
    assert local.read_bytes() == before

    got = await api.get("archive.tar.gz", work, rename=True)
    assert Path(got.files[0].path).name == "archive.tar (1).gz"
    assert (work / "archive.tar (1).gz").stat().st_size == 50
    got = await api.get("archive.tar.gz", local, force=True)
    assert local.read_bytes() == (rig.root / "archive.tar.gz").read_bytes()


async def test_rename_of_names_without_a_suffix(api: tether.Connection, rig: Rig,
                                                work: Path) -> None:
    for name in ("Makefile", ".bashrc"):
        make_file(rig.root / name, 1)
        src = make_file(work / name, 2)
        put = await api.put(src, name, rename=True)
        assert put.files[0].path == f"{name} (1)"


async def test_directory_without_r_is_refused(api: tether.Connection, rig: Rig,
                                              work: Path) -> None:
    (work / "folder").mkdir()
    make_file(work / "folder" / "x", 1)
    with pytest.raises(BadRequest, match=r"is a directory \(use -r\)"):
        await api.put(work / "folder", "folder")
    assert not (rig.root / "folder").exists()

    make_file(rig.root / "rdir" / "y", 1)
    with pytest.raises(RemoteError, match=r"is a directory \(use -r\)"):
        await api.get("rdir", work / "rdir")
    assert not (work / "rdir").exists()
    assert not list(work.glob(".*tether-part"))


async def test_cli_conventions(rig: Rig, ids: Identities, work: Path) -> None:
    """The same rules through ``tether put`` / ``tether get``: one-line errors, exit status 1."""
    port = str(rig.port)
    (work / "folder").mkdir()
    src = make_file(work / "a.txt", 10)
    home = ids.client_home

    done = await arun_cli("put", "-p", port, "--accept-new", str(work / "folder"), f"{HOST}:x",
                   home=home)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tether: {work / 'folder'} is a directory (use -r)"]

    (rig.root / "inbox").mkdir()
    done = await arun_cli("put", "-p", port, "--accept-new", str(src), str(src), f"{HOST}:inbox",
                   home=home)
    assert done.returncode == 1, done.stderr  # the second copy of a.txt finds the first
    assert "exists" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = await arun_cli("put", "-p", port, "--rename", "--json", str(src), f"{HOST}:inbox",
                   home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries"][0]["path"] == "inbox/a (1).txt"
    done = await arun_cli("put", "-p", port, "--force", str(src), f"{HOST}:inbox/", home=home)
    assert done.returncode == 0, done.stderr

    (work / "down").mkdir()
    done = await arun_cli("get", "-p", port, f"{HOST}:inbox/a.txt", f"{HOST}:inbox/a (1).txt",
                   str(work / "down"), home=home)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (work / "down").iterdir()) == ["a (1).txt", "a.txt"]
    done = await arun_cli("get", "-p", port, f"{HOST}:inbox", str(work / "down"), home=home)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["tether: inbox is a directory (use -r)"]


async def test_unconfined_paths_relative_to_root_or_absolute(api: tether.Connection, rig: Rig,
                                                             work: Path) -> None:
    """An unconfined client's relative paths resolve against --root; absolute ones are its own
    business, as for any shell user of the server's account."""
    src = make_file(work / "f.txt", 5)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    await api.put(src, "rel.txt")
    await api.put(src, str(elsewhere / "abs.txt"))
    assert (rig.root / "rel.txt").read_bytes() == src.read_bytes()
    assert (elsewhere / "abs.txt").read_bytes() == src.read_bytes()
    await api.get(str(elsewhere / "abs.txt"), work / "back.txt")
    assert (work / "back.txt").read_bytes() == src.read_bytes()
