"""Processes for a peer: how every command, shell and classic-mode command is started, read and
killed. One module, so exec, shells and classic mode keep one set of rules:

* every process is a session leader (``start_new_session``), so its process group holds its
  children and grandchildren, and killing the group reaches them all;
* resource limits (``RLIMIT_NPROC``, ``RLIMIT_AS``) are set in the child before exec;
* output goes to pipes of our own with a 1 MiB buffer (asyncio's PIPE would make ``wait()`` wait
  for every process holding the pipe, such as a job the command left in the background);
* ending a group is SIGTERM (and SIGCONT, so a stopped group can act on it), then SIGKILL after
  a grace period;
* a leader that exits by itself has its group hung up instead (SIGHUP and SIGCONT, as sshd's
  session end does), so ``nohup`` and ``setsid`` jobs live on; output still arriving from a
  survivor is read for a grace period, then its pipes are closed (its next write gets SIGPIPE).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.errors import SpawnFailed
from tether.server.environment import login_shell

READ_SIZE = 256 * 1024
PIPE_SIZE = 1024 * 1024
SETTLE = 0.5  # seconds a job left behind has to get to nohup's SIG_IGN before the hang-up

Preexec = Callable[[], None] | None

__all__ = ["login_shell"]  # re-exported: exec, shells and classic mode take it from here


def rlimits(nproc: int, memory: int) -> Preexec:
    """What sets the resource limits in the child before exec (None: nothing to set; 0 means
    inherit the server's limit)."""
    if not (nproc or memory):
        return None

    def limit() -> None:
        if nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return limit


def spawn_error(program: str, exc: BaseException) -> SpawnFailed:
    if isinstance(exc, FileNotFoundError):
        return SpawnFailed(f"cannot start {program!r}: no such file")
    if isinstance(exc, PermissionError):
        return SpawnFailed(f"cannot start {program!r}: permission denied")
    return SpawnFailed(f"cannot start {program!r}: {exc}")


def wide_pipe() -> tuple[int, int]:
    """A pipe with a 1 MiB buffer (Linux), so output moves in a quarter as many reads."""
    read_fd, write_fd = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_fd, write_fd


async def start(argv: list[str], *, cwd: Path, env: dict[str, str] | None, stdin: Any,
                stdout: Any, stderr: Any, preexec: Preexec) -> asyncio.subprocess.Process:
    """Start ``argv`` as the leader of a new session (and so of its own process group)."""
    return await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, start_new_session=True, stdin=stdin, stdout=stdout,
        stderr=stderr, preexec_fn=preexec,
    )


async def start_piped(argv: list[str], *, cwd: Path, env: dict[str, str] | None, stdin: bool,
                      preexec: Preexec
                      ) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader,
                                 asyncio.StreamReader]:
    """Start ``argv`` with stdout and stderr on wide pipes of their own, stdin a pipe (or
    /dev/null); returns the process and readers of its stdout and stderr."""
    out, err = wide_pipe(), wide_pipe()
    try:
        proc = await start(
            argv, cwd=cwd, env=env, preexec=preexec, stdout=out[1], stderr=err[1],
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        )
    except BaseException:
        os.close(out[0])
        os.close(err[0])
        raise
    finally:
        os.close(out[1])
        os.close(err[1])
    return proc, await pipe_reader(out[0]), await pipe_reader(err[0])


async def pipe_reader(fd: int, protocol: type[asyncio.StreamReaderProtocol] =
                      asyncio.StreamReaderProtocol) -> asyncio.StreamReader:
    """An asyncio reader over a pipe or terminal fd (which it takes ownership of)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: protocol(reader, loop=loop), pipe)
    return reader


async def read_chunk(pipe: asyncio.StreamReader) -> bytes:
    """A chunk of output; b"" at the end (a terminal's EIO after its last writer is the end)."""
    try:
        return await pipe.read(READ_SIZE)
    except OSError:
        return b""


def kill_group(pid: int, sig: int) -> None:
    """Signal process group ``pid``; one already gone (or not ours any more) is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the group, then SIGKILL it after ``grace`` seconds if its leader lives on."""
    kill_group(proc.pid, signal.SIGTERM)
    kill_group(proc.pid, signal.SIGCONT)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    kill_group(proc.pid, signal.SIGKILL)


async def hang_up(proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]],
                  readers: list[asyncio.StreamReader], grace: float) -> None:
    """The leader exited by itself: SIGHUP whatever is left in its group, read what is still
    written for up to ``grace`` seconds, then stop reading (a ``nohup`` job that kept the pipes
    must neither hold the command open for ever nor be killed).

    A job the leader started just before exiting may not have reached ``nohup``'s
    ``signal(SIGHUP, SIG_IGN)`` yet, so the hang-up waits ``SETTLE`` seconds first, but only
    when something is left in the group (a command that leaves nothing ends at once)."""
    if group_alive(proc.pid):
        await asyncio.sleep(min(SETTLE, grace))
        kill_group(proc.pid, signal.SIGHUP)
        kill_group(proc.pid, signal.SIGCONT)
    if not pumps:
        return
    _done, pending = await asyncio.wait(pumps, timeout=grace)
    for task in pending:
        task.cancel()
    for reader in readers:
        transport = getattr(reader, "_transport", None)
        if transport is not None:
            transport.close()
    await asyncio.gather(*pumps, return_exceptions=True)


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member (its leader already reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
