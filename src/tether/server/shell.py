"""Shells on a stream: a login shell in a pseudo-terminal, or line mode over pipes.

In a terminal the bytes go through the kernel's line discipline untouched, so Ctrl-C, Ctrl-Z and
Ctrl-D do what they do locally, and ``resize`` sets the window size (the kernel sends SIGWINCH).

Line mode is for a client without a terminal: each line is one command, run with ``eval`` in one
persistent shell (so ``cd`` and variables persist) with stdin from /dev/null, followed by a
marker line carrying a random per-session token and the exit status on stdout, and the token
alone on stderr. The markers are stripped from the output and become a ``status`` message, sent
only after everything the command wrote on both channels: separation never depends on timing.
At end of input the shell exits with the last command's status, as ``bash < script`` would.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
import secrets
import struct
import termios
from collections.abc import Callable

from tether.errors import BadRequest, NoTerminal
from tether.net.framed import FramedConnection
from tether.protocol import Eof, Message, Resize, Shell, Status
from tether.server.environment import login_environment
from tether.server.exec import CommandRun, ExecPolicy, SpawnSpec, check_env
from tether.server.process import Preexec, login_shell, pipe_reader, start

MAX_LINE = 64 * 1024


def shell_spec(req: Shell, policy: ExecPolicy, *, line_mode: bool) -> SpawnSpec:
    """What a shell request starts: a login shell, a shell command, or an argv."""
    check_env(req.env)
    if any("\0" in a for a in req.argv):
        raise BadRequest("NUL byte in command")
    shell = login_shell()
    if line_mode:
        argv = [shell]
    elif not req.argv:
        argv = [shell, "-l"]
    elif len(req.argv) == 1:
        argv = [shell, "-c", req.argv[0]]
    else:
        argv = list(req.argv)
    env = login_environment(policy.pass_env, req.env, term=req.term or "dumb")
    return SpawnSpec(argv, policy.root, env, None, True)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    rows, cols = max(1, min(rows, 10_000)), max(1, min(cols, 10_000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _child_setup(limits: Preexec) -> Callable[[], None]:
    """In the child, after setsid: take the pty's slave (stdin) as the controlling terminal."""

    def setup() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if limits is not None:
            limits()

    return setup


class _TerminalProtocol(asyncio.StreamReaderProtocol):
    """A terminal's EIO once its last writer closed is its end of file, not an error.

    Passed on as an error it would lose the output still buffered: ``StreamReader.read`` raises
    a stored exception before returning what it holds (the last words of a command).
    """

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            exc = None
        super().connection_lost(exc)


async def _pipe_writer(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(fd, "wb", buffering=0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


class PtyRun(CommandRun):
    """A program in a pseudo-terminal: one output channel, keystrokes in, resizes applied."""

    def __init__(self, conn: FramedConnection, stream: int, spec: SpawnSpec,
                 policy: ExecPolicy, rows: int, cols: int) -> None:
        super().__init__(conn, stream, spec, policy)
        self.size = (rows, cols)
        self.master = -1

    async def _spawn(self) -> None:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise NoTerminal(f"the server cannot give a pseudo-terminal: {exc.strerror}") from exc
        try:
            _set_winsize(master, *self.size)
            spec = self.spec
            self.proc = await start(spec.argv, cwd=spec.cwd, env=spec.env, stdin=slave,
                                    stdout=slave, stderr=slave,
                                    preexec=_child_setup(self.policy.preexec()))
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        self.outputs = [(await pipe_reader(os.dup(master), _TerminalProtocol), 1)]
        self.stdin = await _pipe_writer(master)

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Resize):
            _set_winsize(self.master, msg.rows, msg.cols)
        elif isinstance(msg, Eof):
            pass  # a terminal has no end of input: the user types Ctrl-D
        else:
            super().handle(msg)


class _MarkerFilter:
    """Strips ``\\n<token>[ status]\\n`` markers from one channel, across read boundaries."""

    def __init__(self, token: bytes, with_status: bool) -> None:
        tail = rb" (-?\d{1,3})\n" if with_status else rb"\n"
        self.pattern = re.compile(rb"\n" + re.escape(token) + tail)
        self.keep = len(token) + 8  # longest marker prefix that may still be incomplete
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes | int]:
        """Output bytes, and for each marker found its status (or 0), in stream order."""
        self.buffer += data
        parts: list[bytes | int] = []
        while match := self.pattern.search(self.buffer):
            if match.start():
                parts.append(self.buffer[: match.start()])
            parts.append(int(match.group(1)) if match.groups() else 0)
            self.buffer = self.buffer[match.end():]
        # a marker starts at a newline: hold back from the last one that could begin it
        newline = self.buffer.rfind(b"\n", max(0, len(self.buffer) - self.keep))
        cut = newline if newline >= 0 else len(self.buffer)
        if cut:
            parts.append(self.buffer[:cut])
            self.buffer = self.buffer[cut:]
        return parts

    def flush(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        return rest


class LineRun(CommandRun):
    """A persistent shell fed one command per line, each answered by a ``status``."""

    def __init__(self, conn: FramedConnection, stream: int, spec: SpawnSpec,
                 policy: ExecPolicy) -> None:
        super().__init__(conn, stream, spec, policy)
        token = secrets.token_hex(16).encode()
        self.token = token
        self.filters = {1: _MarkerFilter(token, True), 2: _MarkerFilter(token, False)}
        self.pending = b""
        self.sent = 0  # commands written to the shell
        self.seen: dict[int, list[int]] = {1: [], 2: []}  # statuses (or 0) per channel
        self.reported = 0

    def feed(self, data: bytes | bytearray) -> None:
        self.pending += data
        if len(self.pending) > MAX_LINE and b"\n" not in self.pending:
            raise BadRequest(f"a line longer than {MAX_LINE} bytes")
        *lines, self.pending = self.pending.split(b"\n")
        script = b"".join(self._wrap(line) for line in lines if line.strip())
        # credit follows the client's bytes, not the (longer) script they became
        self.queue_stdin(script, len(data))

    def _wrap(self, line: bytes) -> bytes:
        self.sent += 1
        quoted = line.replace(b"\0", b"").replace(b"'", b"'\\''")
        t = self.token
        return (b"eval '" + quoted + b"' </dev/null\n__tether_status=$?\n"
                b"printf '\\n%s %d\\n' " + t + b" \"$__tether_status\"\n"
                b"printf '\\n%s\\n' " + t + b" >&2\n")

    def close_stdin(self) -> None:
        if not self._stdin_eof:
            if self.pending.strip():
                self.queue_stdin(self._wrap(self.pending), 0)
                self.pending = b""
            # end with the last command's status, as ``bash < script`` does (not the marker's)
            self.queue_stdin(b'exit "${__tether_status:-0}"\n', 0)
        super().close_stdin()

    async def _pump(self, pipe: asyncio.StreamReader, channel: int) -> None:
        await super()._pump(pipe, channel)
        rest = self.filters[channel].flush()
        if rest:
            await self.conn.send_data(self.stream, channel, rest)

    async def send_output(self, channel: int, data: bytes) -> None:
        for part in self.filters[channel].feed(data):
            if isinstance(part, bytes):
                await self.conn.send_data(self.stream, channel, part)
            else:
                self.seen[channel].append(part)
                self._report()

    def _report(self) -> None:
        """Send ``status`` for every command whose markers arrived on both channels."""
        while self.reported < min(len(self.seen[1]), len(self.seen[2])):
            status = self.seen[1][self.reported]
            self.reported += 1
            self.conn.send(Status(index=self.reported, status=status, stream=self.stream))
