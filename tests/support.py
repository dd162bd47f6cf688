"""Helpers every test suite shares: the tether command of this venv, stopping a process we
started (by its PID), and polling for a condition. Suites import it as ``support`` (pytest puts
``tests/`` on ``sys.path`` for the top-level conftest)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _tether_command() -> list[str]:
    script = Path(sys.executable).with_name("tether")
    if script.exists():
        return [str(script)]
    found = shutil.which("tether")
    return [found] if found else [sys.executable, "-m", "tether"]


TETHER = _tether_command()


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0,
               interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True
