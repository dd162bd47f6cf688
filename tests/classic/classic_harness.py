"""Harness for the classic-protocol tests: a real ``tether serve --classic-port 0`` subprocess.

The server's stderr goes to a log file (a chatty server never blocks on a full pipe); its TLS
port comes from the "listening on HOST:PORT" line and its classic port from the
"classic protocol on HOST:PORT" line. It is stopped by PID at teardown, SIGTERM then SIGKILL.
Test modules import this module, never a ``conftest``; the server itself comes from
``support.start_serve``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import TETHER, ServeProcess, await_line, start_serve

CLASSIC = re.compile(r"classic protocol on 127\.0\.0\.1:(\d+)")


def cli_env(home: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    if home is not None:
        env["TETHER_HOME"] = str(home)
    return env


def tether(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """One ``tether`` command to completion, output captured, stdin /dev/null."""
    return subprocess.run([*TETHER, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=cli_env(home))


@dataclass
class ClassicServe(ServeProcess):
    """A ``tether serve`` that also speaks the classic protocol, with an audit log."""

    classic_port: int = 0

    @property
    def tls_port(self) -> int:
        return self.port

    @property
    def audit(self) -> Path:
        return self.home.parent / "audit.jsonl"

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


def start_classic(base: Path, *extra: str) -> ClassicServe:
    """``tether serve -p 0 --classic-port 0 --audit`` in ``base``, waited for until both its
    ports are announced."""
    server = start_serve(base / "server", base / "root", base / "server.log", "--classic-port",
                         "0", "--audit", str(base / "audit.jsonl"), *extra, env=cli_env(None),
                         new_session=True)
    classic = await_line(server.proc, server.log, CLASSIC)
    return ClassicServe(**vars(server), classic_port=int(classic.group(1)))
