"""A command's run on a Windows server: :class:`~tether.server.exec.CommandRun`'s flow (output
under flow control, stdin, exit) over a process from :mod:`tether.server.winproc`.

asyncio's Windows subprocesses would quote a cmd.exe command line their own way and cannot start
a process suspended (needed to put it in its Job Object before it runs), so the process is a
plain ``Popen`` and its pipes are read and written by threads: a reader thread per output pipe
hands chunks over through a bounded queue (it blocks while the queue is full, so a slow client
holds the command back as on Unix), stdin is written from the default executor, and a waiter
thread reports the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

from tether.errors import BadRequest
from tether.server.exec import SIGNALS, CommandRun
from tether.server.process import READ_SIZE, OutputPipe

assert sys.platform == "win32"

from tether.server import winproc  # noqa: E402  (Windows only, after the platform check)

QUEUED_CHUNKS = 4  # per output pipe: at most 1 MiB read ahead of the client
# Unix signal numbers, as ``exit.signal`` carries them (the client names them).
SIGNAL_NUMBERS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "TERM": 15}


class ThreadPipeReader:
    """The ``read`` of an asyncio reader over a pipe that a thread reads."""

    def __init__(self, pipe: IO[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUED_CHUNKS)
        self._loop = loop
        threading.Thread(target=self._pump, args=(pipe,), daemon=True,
                         name="tether-pipe").start()

    def _pump(self, pipe: IO[bytes]) -> None:
        try:
            while True:
                try:
                    data = pipe.read(READ_SIZE)
                except OSError:
                    data = b""
                try:
                    asyncio.run_coroutine_threadsafe(self.queue.put(data), self._loop).result()
                except RuntimeError:  # the loop is closed: the server is gone
                    return
                if not data:
                    return
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    async def read(self, n: int = -1) -> bytes:
        return await self.queue.get()


class ThreadPipeWriter:
    """The ``write``/``drain``/``close`` of an asyncio writer over a pipe, written off-loop."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe
        self.pending: list[bytes] = []

    def write(self, data: bytes | bytearray) -> None:
        self.pending.append(bytes(data))

    async def drain(self) -> None:
        data, self.pending = b"".join(self.pending), []
        if data:
            await asyncio.get_running_loop().run_in_executor(None, self._write, data)

    def _write(self, data: bytes) -> None:
        try:
            self.pipe.write(data)
        except OSError as exc:  # ERROR_NO_DATA / ERROR_BROKEN_PIPE: the reader is gone
            raise BrokenPipeError(str(exc)) from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.close()


class WinProcess:
    """What :class:`CommandRun` uses of ``asyncio.subprocess.Process``, over a ``Popen``."""

    def __init__(self, proc: subprocess.Popen[bytes], job: winproc.Job,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.popen = proc
        self.job = job
        self.pid = proc.pid
        self.returncode: int | None = None
        self.killed_by: int | None = None  # the signal number a kill stood for
        self._done: asyncio.Future[None] = loop.create_future()
        threading.Thread(target=self._wait, args=(loop,), daemon=True,
                         name="tether-wait").start()

    def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        code = self.popen.wait()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._exited, code)

    def _exited(self, code: int) -> None:
        self.returncode = -self.killed_by if self.killed_by is not None else code & 0xFFFFFFFF
        if not self._done.done():
            self._done.set_result(None)

    async def wait(self) -> int:
        await asyncio.shield(self._done)
        assert self.returncode is not None
        return self.returncode

    def kill(self, signal_number: int) -> None:
        """Kill the whole tree; a command still running reports ``signal_number``."""
        if self.returncode is None and self.killed_by is None:
            self.killed_by = signal_number
        self.job.kill()


class WinCommandRun(CommandRun):
    """A command on Windows: cmd.exe or an argv, in a Job Object, read by threads."""

    async def _spawn(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        proc, job = winproc.spawn(spec.argv, shell=spec.shell, cwd=str(spec.cwd), env=spec.env,
                                  stdin=spec.stdin, nproc=self.policy.nproc,
                                  memory=self.policy.memory)
        win = WinProcess(proc, job, loop)
        self.proc = win  # type: ignore[assignment]
        assert proc.stdout is not None and proc.stderr is not None
        self.outputs = [(ThreadPipeReader(proc.stdout, loop), 1),
                        (ThreadPipeReader(proc.stderr, loop), 2)]
        if proc.stdin is not None:
            self.stdin = ThreadPipeWriter(proc.stdin)  # type: ignore[assignment]

    def _win(self) -> WinProcess | None:
        return self.proc  # type: ignore[return-value]

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            win = self._win()
            if win is not None:
                win.job.close()

    def signal(self, name: str) -> None:
        if name not in SIGNALS:
            raise BadRequest(f"signal {name[:20]!r} is not one tether forwards")
        number = SIGNAL_NUMBERS.get(name)
        if number is None:
            raise BadRequest(f"signal {name} has no Windows equivalent (INT, TERM, HUP, QUIT "
                             f"and KILL end the command's process tree)")
        win = self._win()
        if win is not None:
            win.kill(number)

    def _kill_group(self, sig: int) -> None:
        win = self._win()
        if win is not None:
            win.kill(9)

    async def _leader_exited(self, pumps: list[asyncio.Task[None]]) -> None:
        """No hang-up on Windows (nor ``nohup``): what the command left in its job is killed,
        as before the exit status is sent, and its pipes then end."""
        self._kill_group(9)
        await asyncio.gather(*pumps, return_exceptions=True)

    async def terminate(self) -> None:
        """No gentle first step on Windows: the job's processes are terminated at once."""
        win = self._win()
        if win is not None:
            win.kill(9)


async def run_classic(command: str, cwd: Path, timeout: float, max_output: int,
                      collect: Callable[[OutputPipe, int], Coroutine[Any, Any, tuple[bytes, bool]]]
                      ) -> tuple[int, bytes, bytes, bool, bool, float]:
    """The classic protocol's one command (server/classic.py's ``run_shell``) on Windows:
    cmd.exe in a job, output collected up to ``max_output``, the tree killed on timeout or
    exit. (status, stdout, stderr, timed out, truncated, seconds)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    proc, job = winproc.spawn([command], shell=True, cwd=str(cwd), env=dict(os.environ),
                              stdin=False)
    win = WinProcess(proc, job, loop)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [asyncio.create_task(collect(ThreadPipeReader(pipe, loop), max_output))
               for pipe in (proc.stdout, proc.stderr)]
    timed_out = False
    try:
        try:
            await asyncio.wait_for(win.wait(), timeout)
        except TimeoutError:
            timed_out = True
            win.kill(9)
        job.kill()  # leftovers
        (out, cut_out), (err, cut_err) = await asyncio.gather(*readers)
    finally:
        job.close()
        for task in readers:
            task.cancel()
    code = await win.wait()
    return code, out, err, timed_out, cut_out or cut_err, time.monotonic() - started
