"""Processes: start them, time them, stop them (only ours, by PID), and measure their memory.

Memory is sampled from /proc every 20 ms in a thread while a run lasts. A client's peak is that
of its whole process tree (scp and rsync start ssh). A server's peak covers the root and those
descendants that are part of the server (sshd's per-connection processes, sftp-server) — never
the command it runs for the client; for ``tether serve`` that is the one process, whose kernel
peak mark (VmHWM) is reset through ``/proc/PID/clear_refs`` before each run, so it is exact.
(``wait4``'s ru_maxrss is not used: it counts the harness's own image, which a child shares
between fork and exec.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

SAMPLE_INTERVAL = 0.02  # seconds between memory samples
RESCAN_EVERY = 10  # samples between looks for new descendants


class BenchError(RuntimeError):
    """A peer or tether failed, so a measurement would be meaningless."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _listeners() -> set[str]:
    """Local ``ADDR:PORT`` of every listening TCP socket, as /proc/net/tcp* spells them."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A":
                    found.add(parts[1])
    return found


def is_listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` (from /proc/net/tcp, without connecting)."""
    want = f":{port:04X}"
    return any(local.endswith(want) for local in _listeners())


def all_listening(hosts: Iterable[str], port: int) -> bool:
    """Whether something listens on ``port`` of every IPv4 address in ``hosts`` (without
    connecting: a probe connection would be one more session for a server to serve)."""
    # the kernel prints the address as the 32-bit word it stores, in the machine's byte order
    want = {f"{int.from_bytes(socket.inet_aton(h), sys.byteorder):08X}:{port:04X}"
            for h in hosts}
    return want <= _listeners()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; raise BenchError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop a process we started: SIGTERM by PID, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# --- memory -------------------------------------------------------------------------------------


def _status(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of one process in MiB; zeros once it is gone."""
    rss = hwm = 0.0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                break
    return rss, hwm


def rss_mib(pid: int) -> float:
    """Current resident set of one process, in MiB (0 if it is gone)."""
    return _status(pid)[0]


def reset_peak(pid: int) -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pid`` to its current RSS."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


class Tree:
    """A process and the descendants that count (``names``; None: all of them), sampled.

    ``peak`` is the larger of the largest summed RSS seen and the largest single VmHWM seen.
    VmHWM is per process image and starts afresh at exec, so the harness's own size (which a
    forked child briefly shares, and which wait4's ru_maxrss would report) never leaks in.
    """

    def __init__(self, pid: int, names: frozenset[str] | None = None) -> None:
        self.pid = pid
        self.names = names
        self.pids = {pid}
        self.hwm: dict[int, float] = {}
        self.peak_sum = 0.0

    def rescan(self) -> None:
        if self.names is not None and not self.names:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if self.names is None or child.name() in self.names:
                        self.pids.add(child.pid)

    def sample(self) -> None:
        total = 0.0
        for pid in list(self.pids):
            rss, hwm = _status(pid)
            if not rss:  # gone (a kernel thread or zombie has no VmRSS line either)
                continue
            total += rss
            self.hwm[pid] = max(self.hwm.get(pid, 0.0), hwm)
        self.peak_sum = max(self.peak_sum, total)

    @property
    def peak(self) -> float:
        return max(self.peak_sum, max(self.hwm.values(), default=0.0))


@dataclass(frozen=True)
class ServerProbe:
    """Which processes make up a server: the root, plus descendants with one of ``names``."""

    pid: int
    names: frozenset[str] = frozenset()

    def tree(self) -> Tree:
        reset_peak(self.pid)
        return Tree(self.pid, self.names)

    def rss(self) -> float:
        tree = Tree(self.pid, self.names)
        tree.rescan()
        tree.sample()
        return tree.peak_sum


class PeakSampler:
    """Samples watched process trees in a thread while a run lasts (a context manager)."""

    def __init__(self) -> None:
        self.trees: list[Tree] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, tree: Tree, now: bool = True) -> Tree:
        """Sample ``tree`` from now on (at once too unless ``now`` is false: timing runs)."""
        if now:
            tree.rescan()
            tree.sample()
        self.trees.append(tree)
        return tree

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(SAMPLE_INTERVAL):
            tick += 1
            for tree in list(self.trees):
                if tick % RESCAN_EVERY == 0 or tick in (2, 5):
                    tree.rescan()
                tree.sample()

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for tree in self.trees:
            tree.sample()


# --- timed runs ---------------------------------------------------------------------------------


@dataclass
class Measured:
    """One timed run of a client command."""

    seconds: float
    client_mib: float
    server_mib: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def tail(path: Path, limit: int = 600) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-limit:].strip()
    return ""


def reap(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` (killing it after ``timeout`` seconds); its exit code."""
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status = os.waitpid(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if expired.is_set():
        raise BenchError(f"{proc.args!r} did not finish within {timeout:g} s")
    return proc.returncode


def spawn(cmd: Sequence[str] | str, *, stdin: IO[bytes] | int = subprocess.DEVNULL,
          stdout: IO[bytes] | int = subprocess.DEVNULL, stderr: IO[bytes] | int | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a client command (a string runs through bash, with pipefail)."""
    argv: Sequence[str] = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
    return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env)


def run_measured(cmd: Sequence[str] | str, log: Path, *, probe: ServerProbe | None = None,
                 stdin: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 600.0) -> Measured:
    """Run a client command to completion: wall time, its peak RSS and the server's.

    stdout goes to /dev/null, stderr to ``log``; a non-zero exit raises BenchError with the
    end of that log.
    """
    with open(log, "wb") as err, contextlib.ExitStack() as stack:
        source = stack.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
        with PeakSampler() as sampler:
            server = sampler.watch(probe.tree()) if probe else None
            started = time.perf_counter()
            proc = spawn(cmd, stdin=source, stderr=err, env=env)
            client = sampler.watch(Tree(proc.pid), now=False)  # Popen returns after exec
            code = reap(proc, timeout)
            seconds = time.perf_counter() - started
    if code != 0:
        raise BenchError(f"{cmd!r} exited with {code}: {tail(log)}")
    return Measured(seconds, client.peak, server.peak if server else 0.0)
