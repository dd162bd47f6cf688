"""``tether demo`` in a subprocess: it works, says what it shows, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import LISTENING, TETHER, await_line, stop_process

SECTIONS = [
    "identities: server SHA256:",
    "client SHA256:",
    "server: listening on 127.0.0.1:",
    "connected and authenticated",
    "# a small command",
    "stdout: hello from",
    "# lots of output",
    "700,000 lines",
    "# a command that fails",
    "# output on stderr only",
    "stderr: warning: disk almost full",
    "# an exit status of its own",
    "exit 42",
    "# an empty command",
    "refused at once: empty command",
    "at once over one connection",
    "['0', '1', '2', '3', '4']",
    "server stopped",
    "cleaned up",
]


def test_demo_runs_and_cleans_up(tmp_path: Path, cli: Callable[..., Any]) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    done = cli("demo", env={"TMPDIR": str(tmpdir)}, timeout=120)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    missing = [section for section in SECTIONS if section not in out]
    assert not missing, out
    cleaned = re.search(r"cleaned up (\S+)", out)
    assert cleaned and Path(cleaned.group(1)).parent == tmpdir, "TMPDIR was not used"
    assert list(tmpdir.glob("tether-demo-*")) == []


def test_the_commands_the_demo_prints_can_be_pasted(tmp_path: Path,
                                                    cli: Callable[..., Any]) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    done = cli("demo", "--keep", env={"TMPDIR": str(tmpdir)}, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    serve_line = re.search(r"start the server: (tether serve .*)", out)
    assert serve_line, out
    pasted = [line[2:] for line in out.splitlines() if line.startswith("$ tether run ")]
    assert len(pasted) == 6
    bindir = str(Path(TETHER[0]).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_HOME", "TETHER_DEBUG")}
    env.update(PATH=f"{bindir}:{os.environ['PATH']}", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    log = tmp_path / "serve.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(["bash", "-c", "exec " + serve_line.group(1)], env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    try:
        await_line(proc, log, LISTENING)
        runs = [subprocess.run(["bash", "-c", line], env=env, capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=60) for line in pasted]
    finally:
        stop_process(proc)
    assert runs[0].stdout.startswith(b"hello from "), runs[0].stderr
    assert runs[1].stdout.count(b"\n") == 700_000
    assert runs[2].returncode == 2 and b"No such file" in runs[2].stderr
    assert (runs[3].stdout, runs[3].stderr) == (b"", b"warning: disk almost full\n")
    assert runs[4].returncode == 42
    assert runs[5].returncode != 0 and b"empty command" in runs[5].stderr
