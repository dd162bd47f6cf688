"""The CLI's reporting: a rich progress bar (bytes, rate) drawn in a real terminal (tmux), silence
when stderr is not a terminal unless --progress, and a --json summary a program can parse."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ServeFactory
from .helpers import (
    HOST,
    TETHER,
    Identities,
    MiB,
    Rig,
    arun_cli,
    cli_env,
    make_file,
    same_bytes,
    wait_until,
)

EXIT_MARK = "TETHER-EXIT="


class Tmux:
    """A private tmux server (its own socket under the test's directory), killed at the end."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
                              capture_output=True, text=True, env=self.env, timeout=30)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-J", "-t", "t").stdout

    def kill(self) -> None:
        self("kill-server")


@pytest.fixture
def tmux(work: Path, ids: Identities) -> Tmux:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    env = cli_env(ids.client_home)
    env["TERM"] = "xterm-256color"
    env.pop("NO_COLOR", None)
    return Tmux(work / "tmux.sock", env)


def test_progress_bar_in_a_real_terminal(serve: ServeFactory, ids: Identities, work: Path,
                                         tmux: Tmux) -> None:
    server = serve()
    src = make_file(work / "big.bin", 200 * MiB + 3)
    command = shlex.join([*TETHER, "put", "-p", str(server.port), "--accept-new", str(src),
                          f"{HOST}:big.bin"])
    shell = f"{command}; echo {EXIT_MARK}$?; sleep 600"
    started = tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "30", shell)
    assert started.returncode == 0, started.stderr
    try:
        frames: list[str] = []

        def finished() -> bool:
            frames.append(tmux.screen())
            return EXIT_MARK in frames[-1]

        assert wait_until(finished, timeout=90, interval=0.05), frames[-1]
    finally:
        tmux.kill()
    screen = frames[-1]
    assert f"{EXIT_MARK}0" in screen, screen
    assert same_bytes(src, server.root / "big.bin")
    # the final frame of the bars: a total and the file, bytes done of bytes total, rate, ETA
    assert "total (1 file)" in screen, screen
    assert "big.bin" in screen, screen
    assert re.search(r"209\.7/209\.7 MB", screen), screen
    assert re.search(r"\d+(\.\d+)? [kMG]?B/s", screen), screen  # the rate
    assert re.search(r"\d+:\d\d:\d\d", screen), screen  # the time remaining
    assert "━" in screen, screen  # the bar itself


async def test_no_progress_when_not_a_terminal(rig: Rig, ids: Identities, work: Path) -> None:
    src = make_file(work / "f.bin", 3 * MiB)
    done = await arun_cli("put", "-p", str(rig.port), "--accept-new", str(src), f"{HOST}:f",
                          home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    done = await arun_cli("put", "-p", str(rig.port), "--progress", "--force", str(src),
                          f"{HOST}:f", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert "MB" in done.stderr and "total" in done.stderr


async def test_json_summary(rig: Rig, ids: Identities, work: Path) -> None:
    port = str(rig.port)
    a = make_file(work / "a.bin", 2 * MiB + 1, seed=1)
    b = make_file(work / "b.bin", 10, seed=2)
    (rig.root / "in").mkdir()
    done = await arun_cli("put", "-p", port, "--accept-new", "--json", str(a), str(b),
                          f"{HOST}:in", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files"] == 2
    assert summary["bytes"] == 2 * MiB + 11
    assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0
    assert summary["resumed"] == []
    assert {e["path"] for e in summary["entries"]} == {"in/a.bin", "in/b.bin"}
    assert all(e["hash"].startswith("blake3:") and e["kind"] == "file"
               for e in summary["entries"])

    (work / "down").mkdir()
    done = await arun_cli("get", "-p", port, "--json", "-r", f"{HOST}:in", str(work / "down"),
                          home=ids.client_home)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files"] == 2 and summary["bytes"] == 2 * MiB + 11
    assert summary["resumed"] == []
    assert same_bytes(a, work / "down" / "in" / "a.bin")
    hashes = {Path(e["path"]).name: e["hash"] for e in summary["entries"] if e["kind"] == "file"}
    assert hashes.keys() == {"a.bin", "b.bin"}
