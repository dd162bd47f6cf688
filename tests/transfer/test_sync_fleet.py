"""``sync`` to several hosts at once: the same tree pushed to three real servers (an inventory
group), through the API's ``connect_many(...).sync`` and the CLI, with a per-host summary and
exit status; a host that is down fails alone; the tree walked, and small files read, once for
every host (tests/transfer/test_sync_shared.py: the shared listing itself)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tether
from tether.client import syncs
from tether.inventory import Host, Inventory, save

from .conftest import RigFactory
from .helpers import HOST, Identities, arun_cli, make_file, snapshot


async def farm(make_rig: RigFactory, ids: Identities, work: Path, count: int = 3
               ) -> tuple[list[Path], Path]:
    """``count`` servers in inventory group ``farm`` (h0, h1, ...) of a copy of the client's
    home; (their roots, that home)."""
    home = work / "fleet-home"
    shutil.copytree(ids.client_home, home)
    inventory, roots = Inventory(), []
    for n in range(count):
        rig = await make_rig(root=work / f"root{n}")
        inventory.add(Host(f"h{n}", HOST, rig.port, ("farm",)))
        roots.append(rig.root)
    save(inventory, home)
    return roots, home


def source(work: Path) -> Path:
    src = work / "src"
    for i in range(30):
        make_file(src / f"d{i % 3}" / f"f{i}", 500 * i, seed=i)
    make_file(src / "big.bin", 2_000_000, seed=99)
    return src


async def test_the_api_pushes_one_tree_to_every_host(make_rig: RigFactory, ids: Identities,
                                                     work: Path) -> None:
    roots, home = await farm(make_rig, ids, work)
    src = source(work)
    async with tether.connect_many("@farm", home=home, accept_new=True) as fleet:
        results = await fleet.sync(f"{src}/", "dest")
        assert results.ok and [r.sync.sent for r in results] == [31, 31, 31]  # type: ignore
        make_file(src / "d0" / "f0", 10, seed=7)
        again = await fleet.sync(f"{src}/", "dest", delete=True)
        # --checksum: the one walk hashes (or finds in the client's hash cache) for every host
        same = await fleet.sync(f"{src}/", "dest", checksum=True)
    assert [r.sync.sent for r in again] == [1, 1, 1]  # type: ignore[union-attr]
    assert same.ok and [r.sync.sent for r in same] == [0, 0, 0]  # type: ignore[union-attr]
    for root in roots:
        assert snapshot(root / "dest") == snapshot(src)


async def test_the_cli_reports_each_host(make_rig: RigFactory, ids: Identities,
                                         work: Path) -> None:
    roots, home = await farm(make_rig, ids, work)
    src = source(work)
    done = await arun_cli("sync", "--json", "--accept-new", f"{src}/", "@farm:dest", home=home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] == 3 and report["failed"] == 0
    assert {h["host"]: h["sent"] for h in report["hosts"]} == {"h0": 31, "h1": 31, "h2": 31}
    assert all(h["bytes_sent"] > 2_000_000 for h in report["hosts"])
    assert "3 hosts: 3 ok, 0 failed" in done.stderr
    for root in roots:
        assert snapshot(root / "dest") == snapshot(src)
    dry = await arun_cli("sync", "-n", "--delete", f"{src}/", "h0,h2:dest", home=home)
    assert dry.returncode == 0 and dry.stdout == ""  # in sync: nothing to itemize
    (roots[1] / "dest" / "extra").write_text("x")
    dry = await arun_cli("sync", "-n", "--delete", f"{src}/", "@farm:dest", home=home)
    assert dry.stdout.splitlines() == ["h1 | delete   extra"]
    assert (roots[1] / "dest" / "extra").exists()


async def test_a_host_that_is_down_fails_alone(make_rig: RigFactory, ids: Identities,
                                               work: Path) -> None:
    roots, home = await farm(make_rig, ids, work, count=1)
    rig = await make_rig(root=work / "up")
    inventory = Inventory()
    inventory.add(Host("up", HOST, rig.port, ("mixed",)))
    inventory.add(Host("down", HOST, 1, ("mixed",)))  # nothing listens on port 1
    save(inventory, home)
    src = source(work)
    done = await arun_cli("sync", "--json", "--accept-new", f"{src}/", "@mixed:dest",
                          home=home)
    report = json.loads(done.stdout)
    assert done.returncode == 255 and report["ok"] == 1 and report["failed"] == 1
    assert snapshot(rig.root / "dest") == snapshot(src)
    assert not (roots[0] / "dest").exists()


async def test_hosts_that_fall_behind_the_shared_reads_still_get_every_file(
        make_rig: RigFactory, ids: Identities, work: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The small files read once for every host are kept only within a budget: with one too
    small for more than a file or two, each host reads again what the others no longer hold,
    and every host still ends byte-identical, on the first push and after changes."""
    monkeypatch.setattr(syncs, "SHARED_BYTES", 12_000)
    roots, home = await farm(make_rig, ids, work)
    src = source(work)
    async with tether.connect_many("@farm", home=home, accept_new=True) as fleet:
        first = await fleet.sync(f"{src}/", "dest")
        assert first.ok and [r.sync.sent for r in first] == [31, 31, 31]  # type: ignore
        for i in (3, 4, 17):
            make_file(src / f"d{i % 3}" / f"f{i}", 700 * i, seed=100 + i)
        again = await fleet.sync(f"{src}/", "dest")
    assert again.ok and [r.sync.sent for r in again] == [3, 3, 3]  # type: ignore[union-attr]
    for root in roots:
        assert snapshot(root / "dest") == snapshot(src)


async def test_a_missing_source_fails_every_host_with_its_name(make_rig: RigFactory,
                                                               ids: Identities,
                                                               work: Path) -> None:
    roots, home = await farm(make_rig, ids, work)
    done = await arun_cli("sync", "--json", "--accept-new", f"{work}/absent/", "@farm:dest",
                          home=home)
    report = json.loads(done.stdout)
    assert done.returncode != 0 and report["ok"] == 0 and report["failed"] == 3
    assert all("absent" in h["error"] for h in report["hosts"])
    assert not any((root / "dest").exists() for root in roots)
