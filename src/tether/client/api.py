"""The public async API::

    async with tether.connect("host", port=7722) as conn:
        result = await conn.run("uname -a")          # RunResult: status, stdout, stderr
        async with conn.stream(["cat"]) as proc:      # output as it arrives
            await proc.write(b"hello")
            await proc.close_stdin()
            async for channel, chunk in proc:
                ...

One reader task per connection routes events to the stream they belong to; output is queued
per stream and flow-control credit is granted only as the application takes it, so a slow
consumer bounds memory instead of growing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tether.client import handshake
from tether.errors import (
    BadRequest,
    ConnectionBroken,
    ConnectionClosed,
    NotAuthorized,
    RemoteProtocolError,
    TetherError,
    from_wire,
)
from tether.home import check_host as _check_host
from tether.identity import DEFAULT_PORT, fingerprint, home_dir, load_identity
from tether.net.framed import FramedConnection, FramedProtocol
from tether.net.translate import translated

if TYPE_CHECKING:
    from tether.client.transfer import Progress, TransferResult
from tether.protocol import (
    Close,
    Data,
    Eof,
    Error,
    Exec,
    Exit,
    Message,
    Resize,
    Role,
    Shell,
    Signal,
    Started,
    Status,
)

STDOUT = 1
STDERR = 2
Confirm = Callable[[str, str], bool]


@dataclass(frozen=True)
class RunResult:
    """A finished command. ``status`` follows the shell: 128+N when signal N killed it."""

    argv: list[str]
    status: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: int | None = None
    timed_out: bool = False
    duration: float = 0.0
    encoding: str = "utf-8"

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def text(self) -> str:
        """stdout decoded with the server's output encoding (undecodable bytes replaced)."""
        return self.stdout.decode(self.encoding, "replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(self.encoding, "replace")


@dataclass
class _ExitInfo:
    status: int
    signal: int | None
    timed_out: bool
    duration: float


def _exit_info(msg: Exit) -> _ExitInfo:
    return _ExitInfo(msg.shell_status, msg.signal, msg.timed_out, msg.duration)


@dataclass
class ServerInfo:
    name: str
    platform: str
    encoding: str
    software: str
    fingerprint: str
    client_name: str
    permissions: list[str] = field(default_factory=list)


class StreamHandle:
    """One stream's events, in order; DATA is acknowledged (credit granted) as it is taken."""

    def __init__(self, conn: Connection, stream: int) -> None:
        self._conn = conn
        self.stream = stream
        self._queue: asyncio.Queue[Message | Data | TetherError] = asyncio.Queue()
        self.ended = False
        self.failure: TetherError | None = None

    def _deliver(self, event: Message | Data | TetherError) -> None:
        if isinstance(event, TetherError):
            self.failure = event
        elif isinstance(event, Error):
            self.failure = from_wire(event.code, event.message)
        self._queue.put_nowait(event)

    async def next(self) -> Message | Data:
        """The next event; a stream error or a lost connection is raised."""
        event = await self._queue.get()
        if isinstance(event, TetherError):
            self.ended = True
            raise event
        if isinstance(event, Data):
            self._conn._framed.consumed(self.stream, len(event.data))
        elif event.FINAL:
            self.ended = True
            self._conn._end_stream(self.stream)
            if isinstance(event, Error):
                raise from_wire(event.code, event.message)
        return event

    def send(self, msg: Message) -> None:
        self._conn._framed.send(msg)

    async def send_data(self, data: bytes | memoryview) -> None:
        """Send DATA; if the server ended the stream meanwhile, raise the error it gave."""
        if self.failure is not None:
            raise self.failure
        try:
            await self._conn._framed.send_data(self.stream, 0, data)
        except ConnectionClosed:
            if self.failure is not None:
                raise self.failure from None
            raise

    def abandon(self) -> None:
        if not self.ended:
            self.ended = True
            self._conn._end_stream(self.stream)


class Process(StreamHandle):
    """A running remote command: write stdin, iterate ``(channel, bytes)``, then :meth:`wait`."""

    def __init__(self, conn: Connection, stream: int, argv: list[str]) -> None:
        super().__init__(conn, stream)
        self.argv = argv
        self.pid: int | None = None
        self._exit: _ExitInfo | None = None
        self._error: TetherError | None = None
        self._closed_stdin = False

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        """Output as it arrives: ``(1, bytes)`` for stdout, ``(2, bytes)`` for stderr."""
        while not self.ended:
            try:
                event = await self.next()
            except TetherError as exc:
                self._error = exc
                return
            if isinstance(event, Data):
                yield event.channel, bytes(event.data)
            elif isinstance(event, Started):
                self.pid = event.pid
            elif isinstance(event, Exit):
                self._exit = _exit_info(event)

    async def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (waits for flow-control credit)."""
        await self.send_data(data)

    async def close_stdin(self) -> None:
        if not self._closed_stdin:
            self._closed_stdin = True
            with contextlib.suppress(TetherError):
                self._conn._framed.send(Eof(channel=0, stream=self.stream))
                await self._conn._framed.drain()

    async def signal(self, name: str) -> None:
        """Send a signal by name (``INT``, ``TERM``, ``KILL``…) to the remote process group."""
        with contextlib.suppress(TetherError):
            self._conn._framed.send(Signal(name=name, stream=self.stream))
            await self._conn._framed.drain()

    async def wait(self) -> _ExitInfo:
        """Drain remaining output and return the exit; raises the server's error if it failed."""
        async for _ in self:
            pass
        if self._error is not None:
            raise self._error
        assert self._exit is not None
        return self._exit

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abandon()


class ShellProcess(Process):
    """A program in a remote pseudo-terminal: output arrives on channel 1 only."""

    async def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(TetherError):
            self.send(Resize(rows=rows, cols=cols, stream=self.stream))
            await self._conn._framed.drain()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a background send's failure as seen (it is raised where it is awaited)."""
    if not future.cancelled():
        future.exception()


class LineShell:
    """A persistent remote shell without a terminal: one command per call, each with its own
    output and status; ``cd`` and variables persist between calls."""

    def __init__(self, handle: StreamHandle, encoding: str) -> None:
        self._handle = handle
        self._encoding = encoding
        self._lock = asyncio.Lock()
        self._sent = 0  # commands sent; the server numbers their statuses from 1
        self._done = 0  # the number of the last status received
        self._sending: asyncio.Future[None] | None = None
        self.exit: _ExitInfo | None = None

    async def run(self, command: str) -> RunResult:
        """Run one line in the shell and collect what it wrote and its status.

        If a run is cancelled (a timeout), its command still runs to its end: the next run waits
        for that and discards what it wrote, so output and status are never handed to another.
        """
        if "\n" in command or not command.strip():
            raise BadRequest("a line-mode command is one non-empty line")
        async with self._lock:
            await self._settle()
            if self.exit is not None:
                raise ConnectionClosed(f"the shell exited with status {self.exit.status}")
            # sent whole even if this run is cancelled meanwhile: _settle counts on it
            self._sending = asyncio.ensure_future(
                self._handle.send_data((command + "\n").encode()))
            self._sending.add_done_callback(_retrieve)
            self._sent += 1
            await asyncio.shield(self._sending)
            status, out, err = await self._next_status()
            return RunResult([command], status, out, err, encoding=self._encoding)

    async def _settle(self) -> None:
        """Let the commands of cancelled runs go out and end (their output is dropped)."""
        if self._sending is not None:
            await asyncio.shield(self._sending)
        while self._done < self._sent and self.exit is None:
            await self._next_status()

    async def _next_status(self) -> tuple[int, bytes, bytes]:
        """Events up to the next status (or the exit): it and the output that came before."""
        out: list[bytes | bytearray] = []
        err: list[bytes | bytearray] = []
        while True:
            event = await self._handle.next()
            if isinstance(event, Data):
                (out if event.channel == STDOUT else err).append(event.data)
            elif isinstance(event, Status):
                self._done = event.index
                return event.status, b"".join(out), b"".join(err)
            elif isinstance(event, Exit):
                self.exit = _exit_info(event)
                return self.exit.status, b"".join(out), b"".join(err)

    async def close(self) -> int:
        """End the shell (end of input) and return its exit status."""
        async with self._lock:
            if self.exit is None:
                with contextlib.suppress(TetherError):
                    if self._sending is not None:
                        await asyncio.shield(self._sending)
                    self._handle.send(Eof(channel=0, stream=self._handle.stream))
                while self.exit is None:
                    event = await self._handle.next()
                    if isinstance(event, Exit):
                        self.exit = _exit_info(event)
            return self.exit.status

    async def __aenter__(self) -> LineShell:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.exit is None:
            self._handle.abandon()


class Connection:
    """An authenticated connection to one tether server."""

    def __init__(self, framed: FramedConnection, info: ServerInfo) -> None:
        self._framed = framed
        self.server = info
        self._procs: dict[int, StreamHandle] = {}
        self._reader = asyncio.create_task(self._read_loop())
        self._failure: TetherError | None = None

    async def _read_loop(self) -> None:
        try:
            while True:
                event = await self._framed.next_event()
                if event.stream == 0:
                    if isinstance(event, Error):
                        raise from_wire(event.code, event.message)
                    continue
                proc = self._procs.get(event.stream)
                if proc is not None:
                    proc._deliver(event)
                elif isinstance(event, Data):
                    self._framed.consumed(event.stream, len(event.data))
        except TetherError as exc:
            self._fail(exc)
            if isinstance(exc, RemoteProtocolError):
                await self._framed.fail(exc)
        except asyncio.CancelledError:
            self._fail(ConnectionClosed("connection closed"))
            raise

    def _fail(self, exc: TetherError) -> None:
        self._failure = exc
        for proc in self._procs.values():
            proc._deliver(exc)
        self._procs.clear()

    def _end_stream(self, stream: int) -> None:
        if self._procs.pop(stream, None) is not None:
            with contextlib.suppress(TetherError):
                self._framed.send(Close(stream=stream))

    def _open(self, handle: StreamHandle, msg: Message) -> None:
        if self._failure is not None:
            raise self._failure
        self._procs[handle.stream] = handle
        self._framed.send(msg)

    def open_stream(self, opener: type[Message], **fields: Any) -> StreamHandle:
        """Open a stream with an ``opener`` message built from ``fields`` (used by transfers)."""
        stream = self._framed.proto.next_stream_id()
        handle = StreamHandle(self, stream)
        self._open(handle, opener(stream=stream, **fields))
        return handle

    # --- public --------------------------------------------------------------------------------

    async def start(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = True,
    ) -> Process:
        """Start a command: a string runs through the server's shell, a sequence as an argv."""
        argv = [cmd] if isinstance(cmd, str) else list(cmd)
        stream = self._framed.proto.next_stream_id()
        proc = Process(self, stream, argv)
        self._open(
            proc,
            Exec(
                argv=argv,
                shell=isinstance(cmd, str),
                cwd=cwd,
                env=dict(env or {}),
                timeout=timeout,
                stdin=stdin,
                stream=stream,
            )
        )
        await self._framed.drain()
        return proc

    async def shell(
        self,
        command: str | Sequence[str] | None = None,
        *,
        term: str = "xterm",
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
    ) -> ShellProcess:
        """A login shell (or ``command``) in a remote pseudo-terminal."""
        argv = [] if command is None else [command] if isinstance(command, str) else list(command)
        stream = self._framed.proto.next_stream_id()
        proc = ShellProcess(self, stream, argv)
        self._open(proc, Shell(pty=True, term=term, rows=rows, cols=cols, argv=argv,
                               env=dict(env or {}), stream=stream))
        await self._framed.drain()
        return proc

    async def line_shell(self, *, env: Mapping[str, str] | None = None) -> LineShell:
        """A persistent shell in line mode (no terminal); see :class:`LineShell`."""
        handle = self.open_stream(Shell, pty=False, term="dumb", env=dict(env or {}))
        await self._framed.drain()
        return LineShell(handle, self.server.encoding)

    def stream(self, cmd: str | Sequence[str], **kwargs: Any) -> _ProcessContext:
        """``async with conn.stream(cmd) as proc``: a started :class:`Process`."""
        return _ProcessContext(self.start(cmd, **kwargs))

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run a command to completion and collect its output."""
        proc = await self.start(cmd, cwd=cwd, env=env, timeout=timeout, stdin=input is not None)
        writer = asyncio.create_task(_feed(proc, input)) if input is not None else None
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            async for channel, chunk in proc:
                (out if channel == STDOUT else err).append(chunk)
            info = await proc.wait()
        finally:
            if writer is not None:
                writer.cancel()
        result = RunResult(
            proc.argv, info.status, b"".join(out), b"".join(err), info.signal,
            info.timed_out, info.duration, self.server.encoding,
        )
        if check and not result.ok:
            from tether.errors import RemoteError

            raise RemoteError(f"command exited with status {result.status}")
        return result

    async def put(
        self,
        local: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        remote: str,
        *,
        recursive: bool = False,
        force: bool = False,
        rename: bool = False,
        resume: bool = True,
        progress: Progress | None = None,
    ) -> TransferResult:
        """Upload files (trees with ``recursive``) to ``remote``, verified and atomic."""
        from tether.client import transfer

        sources = [local] if isinstance(local, str | os.PathLike) else list(local)
        return await transfer.put(
            self, [Path(s) for s in sources], remote, recursive=recursive,
            opts=transfer.Options(force, rename, resume, progress or transfer._NoProgress()),
        )

    async def get(
        self,
        remote: str | Sequence[str],
        local: str | os.PathLike[str],
        *,
        recursive: bool = False,
        force: bool = False,
        rename: bool = False,
        resume: bool = True,
        progress: Progress | None = None,
    ) -> TransferResult:
        """Download files (trees with ``recursive``) into ``local``, verified and atomic."""
        from tether.client import transfer

        remotes = [remote] if isinstance(remote, str) else list(remote)
        return await transfer.get(
            self, remotes, Path(local), recursive=recursive,
            opts=transfer.Options(force, rename, resume, progress or transfer._NoProgress()),
        )

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._framed.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _feed(proc: Process, data: bytes) -> None:
    with contextlib.suppress(TetherError):
        await proc.write(data)
    await proc.close_stdin()


class _ProcessContext:
    def __init__(self, starting: Any) -> None:
        self._starting = starting
        self._proc: Process | None = None

    async def __aenter__(self) -> Process:
        self._proc = await self._starting
        return self._proc

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None:
            await self._proc.__aexit__(*exc)


# --- connecting ---------------------------------------------------------------------------------


async def _open(
    host: str,
    port: int,
    home: Path,
    accept_new: bool,
    plaintext: bool,
    confirm: Confirm | None,
    timeout: float,
    keepalive: float | None = None,
) -> Connection:
    from tether.tls import client_context

    if keepalive is not None and keepalive < 0:
        raise ValueError("keepalive must be a number of seconds >= 0 (0: off)")
    identity = None if plaintext else load_identity(home)
    ctx = None if identity is None else client_context(identity)
    loop = asyncio.get_running_loop()
    with translated():
        _, link = await asyncio.wait_for(
            loop.create_connection(
                lambda: FramedProtocol(Role.CLIENT), host, port, ssl=ctx,
                server_hostname="tether" if ctx else None,
            ),
            timeout,
        )
    framed = FramedConnection(link)
    try:
        if identity is not None:
            server_fp = fingerprint(framed.peer_cert or b"")
            _check_host(home, host, port, server_fp, accept_new, confirm)
        try:
            # TLS 1.3 finishes the client's handshake before the server has checked our
            # certificate: a refusal shows up here, as an alert or a reset, never earlier.
            framed.send(handshake.hello())
            await framed.drain()
            answer = await asyncio.wait_for(framed.next_event(), timeout)
        except (NotAuthorized, ConnectionBroken) as exc:
            if identity is None:
                raise
            raise handshake.refused(identity.fingerprint) from exc
        welcome = handshake.welcome_of(answer, identity is not None)
    except BaseException:
        await framed.close()
        raise
    info = ServerInfo(
        welcome.server_name, welcome.platform, welcome.encoding, welcome.software,
        fingerprint(framed.peer_cert) if framed.peer_cert else "plaintext",
        welcome.client_name, welcome.permissions,
    )
    framed.keepalive = keepalive or None
    return Connection(framed, info)


class connect:  # used like a function: `async with tether.connect(...)`
    """Connect to a tether server: ``await tether.connect(...)`` or ``async with``.

    ``keepalive`` (seconds, like ssh's ServerAliveInterval; None or 0: off): after that much
    silence from the server, ping it; after three silent intervals the connection is broken
    (ConnectionBroken "no answer from the server for N s"), so a server that vanished without
    closing is noticed even while a command runs.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        home: str | os.PathLike[str] | None = None,
        accept_new: bool = False,
        plaintext: bool = False,
        confirm: Confirm | None = None,
        timeout: float = 10.0,
        keepalive: float | None = None,
    ) -> None:
        self._args = (host, port, home_dir(home), accept_new, plaintext, confirm, timeout,
                      keepalive)
        self._conn: Connection | None = None

    def __await__(self) -> Any:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await _open(*self._args)
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            await self._conn.close()


__all__ = ["Connection", "Process", "RunResult", "ServerInfo", "connect"]
