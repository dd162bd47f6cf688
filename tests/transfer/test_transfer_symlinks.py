"""Symlinks in trees through the real ``tether`` console script (issue 14, item 14): ``get -r``
and ``put -r`` copy symlinks as symlinks whatever they point to (like scp and rsync), so a tree
such as /etc can be copied; ``--safe-links`` skips the links that leave the tree and says so,
one line per link."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .helpers import HOST, Identities, Rig, arun_cli


def _tree(root: Path) -> Path:
    """A tree with a file, an in-tree link, and links out of it (absolute and relative)."""
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"data")
    os.symlink("sub/f", tree / "inside")
    os.symlink("/etc/passwd", tree / "abs")
    os.symlink("../../outside", tree / "sub" / "up")
    return tree


async def test_get_r_copies_links_out_of_the_tree(rig: Rig, ids: Identities, work: Path) -> None:
    _tree(rig.root)
    done = await arun_cli("get", "-p", str(rig.port), "--accept-new", "-r", f"{HOST}:tree",
                          str(work / "copy"), home=ids.client_home)
    assert done.returncode == 0, done.stderr
    copy = work / "copy"
    assert os.readlink(copy / "abs") == "/etc/passwd"
    assert os.readlink(copy / "sub" / "up") == "../../outside"
    assert os.readlink(copy / "inside") == "sub/f"
    assert (copy / "sub" / "f").read_bytes() == b"data"


async def test_get_r_safe_links_skips_and_says_so(rig: Rig, ids: Identities, work: Path) -> None:
    _tree(rig.root)
    done = await arun_cli("get", "-p", str(rig.port), "--accept-new", "-r", "--safe-links",
                          "--json", f"{HOST}:tree", str(work / "copy"), home=ids.client_home)
    assert done.returncode == 0, done.stderr
    copy = work / "copy"
    assert not os.path.lexists(copy / "abs") and not os.path.lexists(copy / "sub" / "up")
    assert os.readlink(copy / "inside") == "sub/f"
    lines = done.stderr.splitlines()
    assert "tether: tree/abs: symlink to /etc/passwd leaves the tree; skipped (--safe-links)" \
        in lines
    assert any(line.startswith("tether: tree/sub/up: symlink to ../../outside") for line in lines)
    assert {s["path"] for s in json.loads(done.stdout)["skipped"]} == {"tree/abs", "tree/sub/up"}


async def test_put_r_safe_links_skips_and_says_so(rig: Rig, ids: Identities, work: Path) -> None:
    tree = _tree(work / "local")
    (rig.root / "in").mkdir()
    done = await arun_cli("put", "-p", str(rig.port), "--accept-new", "-r", "--safe-links",
                          str(tree), f"{HOST}:in/", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    stored = rig.root / "in" / "tree"
    assert os.readlink(stored / "inside") == "sub/f"
    assert (stored / "sub" / "f").read_bytes() == b"data"
    assert not os.path.lexists(stored / "abs") and not os.path.lexists(stored / "sub" / "up")
    assert done.stderr.count("leaves the tree; skipped (--safe-links)") == 2
    assert f"tether: {tree}/abs: symlink to /etc/passwd leaves the tree" in done.stderr

    done = await arun_cli("put", "-p", str(rig.port), "--accept-new", "-r", str(tree),
                          f"{HOST}:plain", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert os.readlink(rig.root / "plain" / "abs") == "/etc/passwd"
