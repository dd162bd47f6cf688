"""Helpers for the lifecycle and stateful tests: a real ``tether serve`` subprocess, an event loop
on a thread of its own, and finding a test's remote processes by a marker in their command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from support import LISTENING, await_line
from tether.identity import AuthorizedClient, Identity, add_authorized, generate_identity

T = TypeVar("T")


def new_mark() -> str:
    return f"tether-hostile-{uuid.uuid4().hex[:12]}"


def marked(mark: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line holds ``mark``, this one excepted."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and mark in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(interval)
    return True


def survivors(mark: str, within: float = 3.0) -> list[str]:
    """What still runs with ``mark`` after ``within`` seconds (killed at the end, by pid)."""
    if wait_until(lambda: not marked(mark), within):
        return []
    left = marked(mark)
    names = [f"{p.pid}: {' '.join(p.cmdline())}" for p in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return names


def family(mark: str, stubborn: bool = False) -> list[str]:
    """An argv for a leader with a child subshell, both forever; forked subshells keep the
    leader's command line, so all of them carry ``mark``. ``stubborn``: all ignore SIGTERM."""
    trap = "trap '' TERM; " if stubborn else ""
    return ["sh", "-c", f": {mark}; {trap}(while :; do sleep 1; done) & "
                        f"while :; do sleep 1; done"]


class LoopThread:
    """An asyncio event loop on a daemon thread; ``run`` a coroutine on it from any thread."""

    def __init__(self, name: str = "hostile-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class ServeProcess:
    """``tether serve`` as a subprocess, with its own home, root and log file."""

    base: Path
    args: Sequence[str] = ()
    argv: list[str] | None = None  # the whole command, to start it another way
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def home(self) -> Path:
        return self.base / "server"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def authorize(self, client_home: Path, name: str = "client") -> Identity:
        identity = generate_identity(client_home, name)
        add_authorized(self.home, AuthorizedClient(identity.cert_der, name))
        return identity

    def start(self, timeout: float = 30.0) -> ServeProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        seen = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        argv = self.argv or [sys.executable, "-m", "tether", "serve", "-p", "0",
                             "--root", str(self.root), "--kill-grace", "0.5", "--drain", "0",
                             *self.args]
        with self.log.open("ab") as sink:  # a file, not a pipe: a full pipe would block it
            self.proc = subprocess.Popen(
                argv, env={**os.environ, "TETHER_HOME": str(self.home), **self.env},
                stdout=sink, stderr=sink)
        self.port = int(await_line(self.proc, self.log, LISTENING, seen, timeout).group(1))
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it is still there after 10 s; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
