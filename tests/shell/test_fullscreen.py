"""Full-screen programs work in the remote terminal: `top` draws and quits on `q`, `vi` edits
and writes a file; the local terminal comes back as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import TerminalFactory


@pytest.mark.skipif(not shutil.which("top"), reason="top is not installed")
def test_top_draws_and_quits(terminal: TerminalFactory) -> None:
    t = terminal("--", "top", "-d", "0.5")
    t.child.expect("load average")  # the screen was drawn (TERM and size reached top)
    t.child.expect("PID")
    t.child.send("q")
    outcome = t.finish()
    assert outcome.status == 0
    assert outcome.after == outcome.before


@pytest.mark.skipif(not shutil.which("vi"), reason="vi is not installed")
def test_vi_edits_a_file(terminal: TerminalFactory, tmp_path: Path) -> None:
    target = tmp_path / "edited.txt"
    t = terminal("--", "vi", str(target))
    t.child.expect("edited.txt")
    t.child.send("ihello from vi\x1b")  # insert mode, text, Escape
    t.child.send(":wq\r")
    outcome = t.finish()
    assert outcome.status == 0
    assert target.read_text() == "hello from vi\n"
    assert outcome.after == outcome.before
