"""``tether sync``'s two front doors: the console script's fast path (no click: start-up is a
large part of a small re-sync) and the click command must behave the same, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import HOST, Rig, arun_cli, cli_env, make_file, snapshot

FULL = {"TETHER_FULL_CLI": "1"}


def small_tree(root: Path) -> Path:
    make_file(root / "a.txt", 100, seed=1, mode=0o640)
    make_file(root / "d" / "b.bin", 70_000, seed=2)
    (root / "link").symlink_to("d/b.bin")
    return root


async def both(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    """``tether sync ARGS`` by both front doors: identical status, stdout and stderr."""
    fast = await arun_cli("sync", *args, home=rig.client_home)
    full = await arun_cli("sync", *args, home=rig.client_home, env=FULL)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        full.returncode, full.stdout, full.stderr)
    return fast


async def test_dry_runs_and_errors_are_the_same_both_ways(rig: Rig, work: Path) -> None:
    src = small_tree(work / "src")
    port = ["-p", str(rig.port)]
    dry = await both(rig, "-n", "--accept-new", *port, f"{src}/",
                     f"{HOST}:dest")
    assert dry.returncode == 0 and "send     d/b.bin" in dry.stdout.splitlines()
    assert not (rig.root / "dest").exists()
    # options between and after the words, an --exclude, --delete: still the same
    mixed = await both(rig, f"{src}/", "--dry-run", *port, "--exclude", "*.txt",
                       f"{HOST}:dest", "--delete")
    assert mixed.returncode == 0 and "a.txt" not in mixed.stdout
    for args, status, words in [
        ([f"{HOST}:a", f"{HOST}:b"], 1, "between two hosts"),
        ([str(src), "local-dest"], 1, "one side must be remote"),
        ([f"{src}/"], 2, "Usage:"),
        (["--port", "seven", f"{src}/", f"{HOST}:d"], 2, "Usage:"),
        (["--bogus", f"{src}/", f"{HOST}:d"], 2, "Usage:"),
        (["-p", "1", f"{src}/", f"{HOST}:d"], 255, "refused"),
    ]:
        done = await both(rig, *args)
        assert done.returncode == status and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


async def test_the_fast_path_pushes_and_pulls(rig: Rig, work: Path) -> None:
    src = small_tree(work / "src")
    port = ["-p", str(rig.port)]
    pushed = await arun_cli("sync", "--json", "--accept-new", *port, f"{src}/", f"{HOST}:dest",
                            home=rig.client_home)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["sent"] == 2
    assert snapshot(rig.root / "dest") == snapshot(src)
    again = await arun_cli("sync", "--json", *port, f"{src}/", f"{HOST}:dest",
                           home=rig.client_home)
    assert json.loads(again.stdout)["sent"] == 0
    pulled = await arun_cli("sync", *port, f"{HOST}:dest", str(work / "back"),
                            home=rig.client_home)
    assert pulled.returncode == 0 and pulled.stdout == "", pulled.stderr
    assert snapshot(work / "back" / "dest") == snapshot(src)


@pytest.mark.parametrize("path", ["fast", "full"])
async def test_the_fast_path_loads_no_click(rig: Rig, work: Path, path: str) -> None:
    """The fast path really is taken (and TETHER_FULL_CLI really avoids it): what it imports."""
    src = small_tree(work / "src")
    argv = ["tether", "sync", "--accept-new", "-p", str(rig.port), f"{src}/", f"{HOST}:dest"]
    code = f"import sys\nfrom tether.cli.oneshot import main\nsys.argv = {argv!r}\nmain()\n"
    env = {**cli_env(rig.client_home), **(FULL if path == "full" else {})}
    done = await asyncio_run(sys.executable, "-X", "importtime", "-c", code, env=env)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit(b"|", 1)[-1].strip().decode()
                for line in done.stderr.splitlines() if line.startswith(b"import time:")}
    heavy = imported & {"click", "rich", "tether.cli.main", "tether.cli.transfer"}
    assert heavy == set() if path == "fast" else "click" in heavy, heavy
    assert snapshot(rig.root / "dest") == snapshot(src)


async def asyncio_run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    import asyncio

    return await asyncio.to_thread(subprocess.run, list(argv), capture_output=True,
                                   timeout=60, env=env, stdin=subprocess.DEVNULL)
