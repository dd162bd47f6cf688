"""``tether demo`` in a subprocess: it works, says what it shows, and leaves nothing behind."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
