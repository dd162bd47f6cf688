"""Running one command for one stream: check the request, pump output under flow control, feed
stdin, deliver signals, and kill the whole group on timeout or disconnect.

Processes are started, read and killed through :mod:`tether.server.process` (a process group per
command). When the command's leader exits by itself, its group is hung up (SIGHUP, as sshd's
session end does): jobs it left behind end unless they ignore the hang-up (``nohup``) or left the
group (``setsid``). On timeout, when the client abandons the stream or goes away, and when the
server stops, the whole group gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tether.errors import BadRequest, NotFound, PermissionDenied, TetherError
from tether.net.framed import FramedConnection
from tether.protocol import Eof, Exec, Exit, Message, Signal, Started
from tether.server.environment import login_environment
from tether.server.process import (
    Preexec,
    hang_up,
    kill_group,
    login_shell,
    read_chunk,
    rlimits,
    spawn_error,
    start_piped,
    terminate,
)

log = logging.getLogger("tether.server")

SIGNALS = frozenset({"INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "STOP", "CONT", "WINCH"})


@dataclass(frozen=True)
class ExecPolicy:
    """Where commands run and how they are bounded (0: inherit the server's limit)."""

    root: Path
    kill_grace: float = 1.0
    nproc: int = 0
    memory: int = 0
    confined: bool = False  # a client with its own root: --cwd stays below it (not a sandbox)
    pass_env: tuple[str, ...] = ()  # serve --pass-env: server variables commands also get

    def preexec(self) -> Preexec:
        """Sets the resource limits in the child before exec, when there are any to set."""
        return rlimits(self.nproc, self.memory)


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
    if not os.access(cwd, os.X_OK):  # the server's account may not enter it: say so, not
        raise PermissionDenied(        # "cannot start COMMAND" (the command is not the fault)
            f"cannot enter the working directory {req.cwd or str(cwd)}: permission denied "
            f"for the server's account")
    argv = [login_shell(), "-c", req.argv[0]] if req.shell else list(req.argv)
    return SpawnSpec(argv, cwd, login_environment(policy.pass_env, req.env), req.timeout,
                     req.stdin)


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
        self.buffered = 0  # stdin bytes held here until the command reads them (byte budget)
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
        self.proc, out, err = await start_piped(spec.argv, cwd=spec.cwd, env=spec.env,
                                                stdin=spec.stdin, preexec=self.policy.preexec())
        self.stdin = self.proc.stdin
        self.outputs = [(out, 1), (err, 2)]

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
        if self.timed_out or self._killing is not None:
            self._kill_group(signal.SIGKILL)
            await asyncio.gather(*pumps, return_exceptions=True)
        else:
            await hang_up(proc, pumps, [reader for reader, _ in self.outputs],
                          self.policy.kill_grace)
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
        while data := await read_chunk(pipe):
            try:
                await self.send_output(channel, data)
            except TetherError:
                # The client is gone or abandoned the stream: keep draining so the
                # process is never blocked on a full pipe while it is being killed.
                while await read_chunk(pipe):
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
        self.buffered += len(data)
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
                self.buffered -= len(data)
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
        if self.proc is not None:
            kill_group(self.proc.pid, sig)

    async def terminate(self) -> None:
        """SIGTERM the group, then SIGKILL it after the grace period if the leader lives on."""
        if self.proc is not None:
            await terminate(self.proc, self.policy.kill_grace)

    def abandon(self) -> None:
        """The client closed the stream or went away: kill the group in the background."""
        if self._killing is None and self.proc is not None and self.proc.returncode is None:
            self._killing = asyncio.create_task(self.terminate())

