"""Running one command for one stream: spawn in its own process group, pump output under flow
control, feed stdin, deliver signals, and kill the whole group on timeout or disconnect.

Every command is a session leader (``start_new_session``), so its process group holds its
children and grandchildren. When the command itself exits, whatever it left running in that group
is killed, as when a terminal closes (``setsid`` detaches a process on purpose). On timeout or
when the client goes away the group gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tether.errors import BadRequest, NotFound, SpawnFailed, TetherError
from tether.net.framed import FramedConnection
from tether.protocol import Eof, Exec, Exit, Message, Signal, Started

log = logging.getLogger("tether.server")

READ_SIZE = 256 * 1024
PIPE_SIZE = 1024 * 1024
SIGNALS = frozenset({"INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "STOP", "CONT", "WINCH"})


def login_shell() -> str:
    """The server user's login shell, as ssh uses it; /bin/sh if it has none."""
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell if shell and os.access(shell, os.X_OK) else "/bin/sh"


@dataclass(frozen=True)
class ExecPolicy:
    root: Path
    kill_grace: float = 1.0


def _check_request(req: Exec) -> None:
    if not req.argv or not any(a.strip() for a in req.argv[:1]):
        raise BadRequest("empty command")
    if req.shell and len(req.argv) != 1:
        raise BadRequest("a shell command is exactly one string")
    for key in req.env:
        if not key or "=" in key or "\0" in key:
            raise BadRequest(f"bad environment variable name {key!r}")
    if any("\0" in a for a in req.argv) or any("\0" in v for v in req.env.values()):
        raise BadRequest("NUL byte in command or environment")
    if req.timeout is not None and req.timeout <= 0:
        raise BadRequest("timeout must be positive")


def _spawn_error(program: str, exc: BaseException) -> SpawnFailed:
    if isinstance(exc, FileNotFoundError):
        return SpawnFailed(f"cannot start {program!r}: no such file")
    if isinstance(exc, PermissionError):
        return SpawnFailed(f"cannot start {program!r}: permission denied")
    return SpawnFailed(f"cannot start {program!r}: {exc}")


def _wide_pipe() -> tuple[int, int]:
    """A pipe with a 1 MiB buffer (Linux), so output moves in a quarter as many reads."""
    read_fd, write_fd = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_fd, write_fd


async def _pipe_reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


class CommandRun:
    """One command on one stream, from spawn to the final ``exit`` frame."""

    def __init__(self, conn: FramedConnection, stream: int, req: Exec, policy: ExecPolicy) -> None:
        self.conn = conn
        self.stream = stream
        self.req = req
        self.policy = policy
        self.proc: asyncio.subprocess.Process | None = None
        self.timed_out = False
        self._stdin: deque[bytes] = deque()
        self._stdin_ready = asyncio.Event()
        self._stdin_eof = False
        self._killing: asyncio.Task[None] | None = None
        self._started = 0.0
        self._stdout: asyncio.StreamReader | None = None
        self._stderr: asyncio.StreamReader | None = None

    async def start(self) -> None:
        """Spawn the process and announce it; raises a RemoteError the session sends back."""
        _check_request(self.req)
        cwd = self.policy.root / (self.req.cwd or "")
        if not cwd.is_dir():
            raise NotFound(f"no such directory: {self.req.cwd or cwd}")
        env = {**os.environ, **self.req.env}
        stdin = asyncio.subprocess.PIPE if self.req.stdin else asyncio.subprocess.DEVNULL
        argv = [login_shell(), "-c", self.req.argv[0]] if self.req.shell else self.req.argv
        self._started = time.monotonic()
        out, err = _wide_pipe(), _wide_pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, start_new_session=True, stdin=stdin,
                stdout=out[1], stderr=err[1],
            )
        except (OSError, ValueError) as exc:
            os.close(out[0])
            os.close(err[0])
            raise _spawn_error(self.req.argv[0], exc) from exc
        finally:
            os.close(out[1])
            os.close(err[1])
        self._stdout = await _pipe_reader(out[0])
        self._stderr = await _pipe_reader(err[0])
        self.conn.send(Started(pid=self.proc.pid, stream=self.stream))

    async def run(self) -> None:
        """Pump output until the command ends, then send ``exit`` (unless the client is gone)."""
        proc = self.proc
        assert proc is not None and self._stdout is not None and self._stderr is not None
        tasks = [
            asyncio.create_task(self._pump(self._stdout, 1)),
            asyncio.create_task(self._pump(self._stderr, 2)),
        ]
        if proc.stdin is not None:
            tasks.append(asyncio.create_task(self._feed_stdin(proc.stdin)))
        try:
            await asyncio.wait_for(proc.wait(), self.req.timeout)
        except TimeoutError:
            self.timed_out = True
            await self.terminate()
        self._kill_group(signal.SIGKILL)  # leftovers in its group, as when a terminal closes
        await asyncio.gather(*tasks[:2], return_exceptions=True)
        for task in tasks[2:]:
            task.cancel()
        code = proc.returncode
        assert code is not None
        duration = time.monotonic() - self._started
        with contextlib.suppress(TetherError):
            self.conn.send(
                Exit(
                    status=code if code >= 0 else None,
                    signal=-code if code < 0 else None,
                    timed_out=self.timed_out,
                    duration=round(duration, 6),
                    stream=self.stream,
                )
            )
            await self.conn.drain()

    async def _pump(self, pipe: asyncio.StreamReader, channel: int) -> None:
        while data := await pipe.read(READ_SIZE):
            try:
                await self.conn.send_data(self.stream, channel, data)
            except TetherError:
                # The client is gone or abandoned the stream: keep draining so the
                # process is never blocked on a full pipe while it is being killed.
                while await pipe.read(READ_SIZE):
                    pass
                return

    # --- stdin ---------------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Eof):
            self.close_stdin()
        elif isinstance(msg, Signal):
            self.signal(msg.name)
        else:
            raise BadRequest(f"unexpected {msg.TYPE!r} for a command")

    def feed(self, data: bytes) -> None:
        """stdin from the client; credit is granted as the command consumes it."""
        if self.proc is None or self.proc.stdin is None or self._stdin_eof:
            self.conn.consumed(self.stream, len(data))
            return
        self._stdin.append(data)
        self._stdin_ready.set()

    def close_stdin(self) -> None:
        self._stdin_eof = True
        self._stdin_ready.set()

    async def _feed_stdin(self, stdin: asyncio.StreamWriter) -> None:
        broken = False
        while True:
            await self._stdin_ready.wait()
            self._stdin_ready.clear()
            while self._stdin:
                data = self._stdin.popleft()
                if not broken:
                    try:
                        stdin.write(data)
                        await stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        broken = True  # the command stopped reading: discard, keep granting
                self.conn.consumed(self.stream, len(data))
            if self._stdin_eof:
                with contextlib.suppress(OSError):
                    stdin.close()
                return

    # --- signals and killing -------------------------------------------------------------------

    def signal(self, name: str) -> None:
        if name not in SIGNALS:
            raise BadRequest(f"signal {name[:20]!r} is not one tether forwards")
        self._kill_group(signal.Signals[f"SIG{name}"])

    def _kill_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def terminate(self) -> None:
        """SIGTERM the group, then SIGKILL it after the grace period if the leader lives on."""
        proc = self.proc
        if proc is None:
            return
        self._kill_group(signal.SIGTERM)
        self._kill_group(signal.SIGCONT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.policy.kill_grace)
        self._kill_group(signal.SIGKILL)

    def abandon(self) -> None:
        """The client closed the stream or went away: kill the group in the background."""
        if self._killing is None and self.proc is not None and self.proc.returncode is None:
            self._killing = asyncio.create_task(self.terminate())
