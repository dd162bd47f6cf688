"""Helpers for the transfer tests: deterministic file contents, file and tree comparisons, the
CLI as a subprocess, and the small records the fixtures in ``conftest.py`` hand out."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import re
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

import tether
from support import TETHER
from support import wait_until as _wait_until
from tether.identity import Identity
from tether.server.listener import Server

HOST = "127.0.0.1"
MiB = 1024 * 1024
RESUMED = re.compile(r"resumed at (\d+) bytes")
CLI_TIMEOUT = 90.0
ALL_PERMISSIONS = frozenset({"exec", "shell", "put", "get"})


# --- file contents and comparisons --------------------------------------------------------------


def pattern(size: int, seed: int = 0) -> Iterator[bytes]:
    """Deterministic, incompressible-looking chunks totalling ``size`` bytes (every MiB differs)."""
    block = bytearray(random.Random(seed).randbytes(MiB))
    index = 0
    left = size
    while left > 0:
        block[:8] = index.to_bytes(8, "little")
        piece = bytes(block[: min(MiB, left)])
        yield piece
        left -= len(piece)
        index += 1


def make_file(path: Path, size: int, seed: int = 0, mode: int | None = None,
              mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for chunk in pattern(size, seed):
            fh.write(chunk)
    if mode is not None:
        os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def same_bytes(a: Path, b: Path, chunk: int = 16 * MiB) -> bool:
    """Byte-for-byte equality (a plain comparison, independent of the code under test)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    buf_a, buf_b = bytearray(chunk), bytearray(chunk)
    with a.open("rb", buffering=0) as fa, b.open("rb", buffering=0) as fb:
        while True:
            n_a, n_b = fa.readinto(buf_a), fb.readinto(buf_b)
            if n_a != n_b:
                return False
            if not n_a:
                return True
            if (buf_a != buf_b) if n_a == chunk else (buf_a[:n_a] != buf_b[:n_b]):
                return False


def file_digest(path: Path) -> str:
    if not path.stat().st_size:
        return str(blake3.blake3().hexdigest())
    return str(blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).hexdigest())


def snapshot(root: Path, *, mtimes: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root`` (symlinks not followed): its type, mode, the hash of its bytes,
    its link target, and (``mtimes``) the mtime of regular files."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(st.st_mode & 0o7777))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", oct(st.st_mode & 0o7777), file_digest(path),
                            st.st_mtime_ns if mtimes else None)
            else:
                out[rel] = ("other", st.st_mode)
    return out


def listing(path: Path) -> list[str]:
    """Every name below ``path``, recursively, sorted (to show that nothing was written)."""
    if not path.exists():
        return []
    return sorted(
        (Path(d) / n).relative_to(path).as_posix()
        for d, dirs, files in os.walk(path) for n in dirs + files
    )


def part_of(path: Path) -> Path:
    """The partial file a transfer to ``path`` writes."""
    return path.with_name(f".{path.name}.tether-part")


def lock_free(path: Path) -> bool:
    """True when no transfer holds the ``flock`` it keeps on the partial ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def flip_bytes(path: Path, offset: int, count: int = 16) -> None:
    """Corrupt ``count`` bytes of ``path`` at ``offset`` (size unchanged)."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        data = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0,
               interval: float = 0.005) -> bool:
    """:func:`support.wait_until`, polling fast: kill tests must land mid-transfer."""
    return _wait_until(predicate, timeout, interval)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


# --- records the fixtures hand out --------------------------------------------------------------


@dataclass(frozen=True)
class Identities:
    base: Path
    server: Identity
    server_home: Path  # holds server_key.pem and server_cert.pem, copied into serve homes
    client: Identity
    client_home: Path


@dataclass
class Rig:
    """An in-process server and the client identity home that may use it."""

    server: Server
    home: Path
    root: Path
    client_home: Path

    @property
    def port(self) -> int:
        return self.server.port

    def connect(self, home: Path | None = None) -> tether.connect:
        return tether.connect(HOST, self.port, home=home or self.client_home, accept_new=True)


@dataclass
class ClientSpec:
    """A client to authorize on a rig: ``root`` confines it, ``permissions`` limit it; its
    fresh identity lands in ``home``."""

    name: str
    root: str | None = None
    permissions: frozenset[str] = ALL_PERMISSIONS
    home: Path = field(default=Path())


# --- the CLI as a subprocess --------------------------------------------------------------------




def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", TETHER_HOME=str(home))
    return env


def run_cli(*args: str, home: Path, timeout: float = CLI_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS`` to completion (stdin /dev/null, output captured as text); ``env``
    adds to the environment."""
    return subprocess.run([*TETHER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**cli_env(home), **(env or {})}, stdin=subprocess.DEVNULL)


async def arun_cli(*args: str, home: Path, timeout: float = CLI_TIMEOUT,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli` from a coroutine, so that an in-process server keeps serving."""
    return await asyncio.to_thread(run_cli, *args, home=home, timeout=timeout, env=env)


def popen_cli(*args: str, home: Path, log: Path) -> subprocess.Popen[bytes]:
    """``tether ARGS`` in the background, stdout and stderr to ``log`` (never a full pipe)."""
    with log.open("wb") as out:
        return subprocess.Popen([*TETHER, *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, env=cli_env(home))


def kill9(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process this test started, by its PID, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
