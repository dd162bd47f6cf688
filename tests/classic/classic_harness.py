"""Harness for the classic-protocol tests: a real ``tether serve --classic-port 0`` subprocess.

The server's stderr goes to a log file (a chatty server never blocks on a full pipe); its TLS
port comes from the "listening on HOST:PORT" line and its classic port from the
"classic protocol on HOST:PORT" line. It is stopped by PID at teardown, SIGTERM then SIGKILL.
Self-contained on purpose: nothing here depends on tests/conftest.py (and test modules import
this module, never a ``conftest``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
CLASSIC = re.compile(r"classic protocol on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0


def tether_argv() -> list[str]:
    script = Path(sys.executable).with_name("tether")
    if script.exists():
        return [str(script)]
    found = shutil.which("tether")
    return [found] if found else [sys.executable, "-m", "tether"]


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", TETHER_HOME=str(home))
    return env


def tether(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """One ``tether`` command to completion, output captured, stdin /dev/null."""
    return subprocess.run([*tether_argv(), *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=cli_env(home))


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    home: Path
    root: Path
    log: Path
    tls_port: int
    classic_port: int

    @property
    def audit(self) -> Path:
        return self.home.parent / "audit.jsonl"

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_serve(base: Path, *extra: str) -> ServeProcess:
    """``tether serve -p 0 --classic-port 0 --audit`` in ``base``, waited for until it
    listens."""
    home, root, log = base / "server", base / "root", base / "server.log"
    root.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            [*tether_argv(), "serve", "-p", "0", "--root", str(root), "--classic-port", "0",
             "--audit", str(base / "audit.jsonl"), *extra],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=cli_env(home),
            start_new_session=True,
        )
    ports: list[int] = []

    def listening() -> bool:
        text = log.read_text(errors="replace")
        tls, classic = LISTENING.search(text), CLASSIC.search(text)
        if tls and classic:
            ports[:] = [int(tls.group(1)), int(classic.group(1))]
        return bool(ports) or proc.poll() is not None

    wait_until(listening, START_TIMEOUT)
    if not ports:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        raise AssertionError(f"tether serve did not start:\n{log.read_text()}")
    return ServeProcess(proc, home, root, log, ports[0], ports[1])
