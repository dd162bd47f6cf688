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
import resource
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tether.errors import BadRequest, NotFound, PermissionDenied, SpawnFailed, TetherError
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
    """Where commands run and how they are bounded (0: inherit the server's limit)."""

    root: Path
    kill_grace: float = 1.0
    nproc: int = 0
    memory: int = 0
    confined: bool = False  # a client with its own root: --cwd stays below it (not a sandbox)

    def preexec(self) -> Callable[[], None] | None:
        """Sets the resource limits in the child before exec, when there are any to set."""
        if not (self.nproc or self.memory):
            return None
        nproc, memory = self.nproc, self.memory

        def limit() -> None:
            if nproc:
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        return limit


@dataclass(frozen=True)
class SpawnSpec:
    """What to start, once a request has been checked and turned into an argv."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout: float | None = None
    stdin: bool = True


def check_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise BadRequest(f"bad environment variable {key[:40]!r}")


def exec_spec(req: Exec, policy: ExecPolicy) -> SpawnSpec:
    """Check an exec request and say what it runs; raises BadRequest or NotFound."""
    if not req.argv or not req.argv[0].strip():
        raise BadRequest("empty command")
    if req.shell and len(req.argv) != 1:
        raise BadRequest("a shell command is exactly one string")
    if any("\0" in a for a in req.argv):
        raise BadRequest("NUL byte in command")
    check_env(req.env)
    if req.timeout is not None and req.timeout <= 0:
        raise BadRequest("timeout must be positive")
    if policy.confined and req.cwd and (req.cwd.startswith("/") or ".." in req.cwd.split("/")):
        raise PermissionDenied(f"--cwd {req.cwd!r} is outside this client's root")
    cwd = policy.root / (req.cwd or "")
    if not cwd.is_dir():
        raise NotFound(f"no such directory: {req.cwd or cwd}")
    argv = [login_shell(), "-c", req.argv[0]] if req.shell else list(req.argv)
    return SpawnSpec(argv, cwd, {**os.environ, **req.env}, req.timeout, req.stdin)


def spawn_error(program: str, exc: BaseException) -> SpawnFailed:
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


async def pipe_reader(fd: int) -> asyncio.StreamReader:
    """An asyncio reader over a pipe or terminal fd (which it takes ownership of)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


class CommandRun:
    """One process on one stream, from spawn to the final ``exit`` frame."""

    def __init__(self, conn: FramedConnection, stream: int, spec: SpawnSpec,
                 policy: ExecPolicy) -> None:
        self.conn = conn
        self.stream = stream
        self.spec = spec
        self.policy = policy
        self.proc: asyncio.subprocess.Process | None = None
        self.timed_out = False
        self.outputs: list[tuple[asyncio.StreamReader, int]] = []
        self.stdin: asyncio.StreamWriter | None = None
        # (bytes to write, credit they free)
        self._stdin: deque[tuple[bytes | bytearray, int]] = deque()
        self._stdin_ready = asyncio.Event()
        self._stdin_eof = False
        self._killing: asyncio.Task[None] | None = None
        self._started = 0.0
        self.duration = 0.0

    async def start(self) -> None:
        """Spawn the process and announce it; raises a RemoteError the session sends back."""
        self._started = time.monotonic()
        try:
            await self._spawn()
        except (OSError, ValueError) as exc:
            raise spawn_error(self.spec.argv[0], exc) from exc
        assert self.proc is not None
        self.conn.send(Started(pid=self.proc.pid, stream=self.stream))

    async def _spawn(self) -> None:
        """Start with stdout and stderr on wide pipes of their own (subclasses: a terminal)."""
        spec = self.spec
        out, err = _wide_pipe(), _wide_pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *spec.argv, cwd=spec.cwd, env=spec.env, start_new_session=True,
                stdin=asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL,
                stdout=out[1], stderr=err[1], preexec_fn=self.policy.preexec(),
            )
        except BaseException:
            os.close(out[0])
            os.close(err[0])
            raise
        finally:
            os.close(out[1])
            os.close(err[1])
        self.stdin = self.proc.stdin
        self.outputs = [(await pipe_reader(out[0]), 1), (await pipe_reader(err[0]), 2)]

    async def run(self) -> None:
        """Pump output until the command ends, then send ``exit`` (unless the client is gone)."""
        proc = self.proc
        assert proc is not None
        pumps = [asyncio.create_task(self._pump(reader, ch)) for reader, ch in self.outputs]
        feeder = asyncio.create_task(self._feed_stdin(self.stdin)) if self.stdin else None
        try:
            await asyncio.wait_for(proc.wait(), self.spec.timeout)
        except TimeoutError:
            self.timed_out = True
            await self.terminate()
        self._kill_group(signal.SIGKILL)  # leftovers in its group, as when a terminal closes
        await asyncio.gather(*pumps, return_exceptions=True)
        if feeder is not None:
            feeder.cancel()
        code = await proc.wait()  # reaped: after a SIGKILL the returncode is not set until now
        self.duration = duration = time.monotonic() - self._started
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
        while data := await _read(pipe):
            try:
                await self.send_output(channel, data)
            except TetherError:
                # The client is gone or abandoned the stream: keep draining so the
                # process is never blocked on a full pipe while it is being killed.
                while await _read(pipe):
                    pass
                return

    async def send_output(self, channel: int, data: bytes) -> None:
        await self.conn.send_data(self.stream, channel, data)

    # --- stdin ---------------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Eof):
            self.close_stdin()
        elif isinstance(msg, Signal):
            self.signal(msg.name)
        else:
            raise BadRequest(f"unexpected {msg.TYPE!r} for a command")

    def feed(self, data: bytes | bytearray) -> None:
        """stdin from the client; credit is granted as the command consumes it."""
        self.queue_stdin(data, len(data))

    def queue_stdin(self, data: bytes | bytearray, credit: int) -> None:
        """Write ``data`` to the process, granting ``credit`` received bytes once written."""
        if self.stdin is None or self._stdin_eof:
            self.conn.consumed(self.stream, credit)
            return
        self._stdin.append((data, credit))
        self._stdin_ready.set()

    def close_stdin(self) -> None:
        self._stdin_eof = True
        self._stdin_ready.set()

    async def _feed_stdin(self, stdin: asyncio.StreamWriter) -> None:
        """Write queued input in order; a reader that went away makes the rest be discarded."""
        broken = False
        while True:
            await self._stdin_ready.wait()
            self._stdin_ready.clear()
            while self._stdin:
                data, credit = self._stdin.popleft()
                if not broken:
                    try:
                        stdin.write(data)
                        await stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        broken = True  # the command stopped reading: discard, keep granting
                self.conn.consumed(self.stream, credit)
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


async def _read(pipe: asyncio.StreamReader) -> bytes:
    """A chunk of output; b"" at the end (a terminal's EIO after its last writer is the end)."""
    try:
        return await pipe.read(READ_SIZE)
    except OSError:
        return b""
