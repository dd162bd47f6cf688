"""Helpers every test suite shares: the tether command of this venv, stopping a process we
started (by its PID), polling for a condition, and a ``tether serve`` subprocess read from its
"listening on" line. Suites import it as ``support`` (pytest puts ``tests/`` on ``sys.path`` for
the top-level conftest)."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self


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


# --- ``tether serve`` subprocesses --------------------------------------------------------------

LISTENING = re.compile(r"listening on [\d.]+:(\d+)(?:, fingerprint (SHA256:\S+))?")
START_TIMEOUT = 30.0


def await_line(proc: subprocess.Popen[Any], log: Path, pattern: re.Pattern[str],
               offset: int = 0, timeout: float = START_TIMEOUT) -> re.Match[str]:
    """The first match of ``pattern`` in ``log`` past ``offset``, waited for while ``proc``
    lives; if it never comes, ``proc`` is stopped and the test fails with the log."""
    match: re.Match[str] | None = None

    def seen() -> bool:
        nonlocal match
        match = pattern.search(log.read_text(errors="replace")[offset:])
        return match is not None or proc.poll() is not None

    try:
        wait_until(seen, timeout, interval=0.02)
        if match is None:
            raise AssertionError(f"tether serve did not start:\n{log.read_text()}")
    except BaseException:
        stop_process(proc)
        raise
    return match


@dataclass
class ServeProcess:
    """A running ``tether serve`` subprocess, its files, and what its "listening on" line
    said (port, and fingerprint unless it serves plaintext). As a context manager it is
    stopped (by PID) at the end of the block."""

    proc: subprocess.Popen[bytes]
    home: Path
    root: Path
    log: Path
    port: int
    fingerprint: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)

    def checked(self) -> Self:
        """This server, asserted still running (failing with its log's tail otherwise): a test
        that crashed a shared server shows up as its own failure, not the next test's."""
        assert self.alive(), self.log_text()[-4000:]
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_serve(home: Path, root: Path, log: Path, *extra: str, env: Mapping[str, str],
                port: int = 0, new_session: bool = False,
                preexec: Callable[[], None] | None = None) -> ServeProcess:
    """Start ``tether serve -p PORT --root ROOT EXTRA`` as ``home`` (``env`` is the whole
    environment; ``TETHER_HOME`` is set here) and wait for its "listening on" line. The log is
    appended to (a restart keeps the earlier lines) and is a file, never a pipe that could fill
    up and block the server."""
    root.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            # --drain 0: a test's SIGTERM ends its server at once, as before drains existed
            # (tests/service/ tests the drain); EXTRA may override it
            [*TETHER, "serve", "-p", str(port), "--root", str(root), "--drain", "0", *extra],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            env={**env, "TETHER_HOME": str(home)}, start_new_session=new_session,
            preexec_fn=preexec,
        )
    match = await_line(proc, log, LISTENING, offset)
    return ServeProcess(proc, home, root, log, int(match.group(1)), match.group(2) or "")


def store_whole(dir_fd: int, name: str, data: bytes, mode: int, mtime_ns: int, *, force: bool,
                rename: bool) -> str:
    """One small file stored as a batch stores it: a durable group of one, settled now."""
    placed: list[str] = []
    from tether.storage.durable import DurableGroup

    group = DurableGroup()
    try:
        group.add(dir_fd, name, data, mode, mtime_ns, force=force, rename=rename,
                  on_placed=placed.append)
        group.wait()
    finally:
        group.close()
    return placed[0]
