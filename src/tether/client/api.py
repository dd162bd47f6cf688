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
from typing import Any

from tether import __version__
from tether.errors import (
    ConnectionBroken,
    ConnectionClosed,
    HostChanged,
    HostUnknown,
    NotAuthorized,
    RemoteProtocolError,
    TetherError,
    from_wire,
)
from tether.identity import (
    DEFAULT_PORT,
    add_known_host,
    fingerprint,
    home_dir,
    host_key,
    known_hosts_path,
    load_identity,
    lookup_known_host,
)
from tether.net.framed import FramedConnection, translated
from tether.protocol import (
    PROTOCOL_VERSIONS,
    Close,
    Data,
    Eof,
    Error,
    Exec,
    Exit,
    Hello,
    Message,
    Role,
    Signal,
    Started,
    Welcome,
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
    status = msg.status if msg.status is not None else 128 + (msg.signal or 0)
    return _ExitInfo(status, msg.signal, msg.timed_out, msg.duration)


@dataclass
class ServerInfo:
    name: str
    platform: str
    encoding: str
    software: str
    fingerprint: str
    client_name: str
    permissions: list[str] = field(default_factory=list)


class Process:
    """A running remote command: write stdin, iterate ``(channel, bytes)``, then :meth:`wait`."""

    def __init__(self, conn: Connection, stream: int, argv: list[str]) -> None:
        self._conn = conn
        self.stream = stream
        self.argv = argv
        self.pid: int | None = None
        self._queue: asyncio.Queue[Message | Data | TetherError] = asyncio.Queue()
        self._exit: _ExitInfo | None = None
        self._error: TetherError | None = None
        self._done = asyncio.Event()
        self._closed_stdin = False

    # events from the connection's reader
    def _deliver(self, event: Message | Data | TetherError) -> None:
        if isinstance(event, Started):
            self.pid = event.pid
            return
        self._queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        """Output as it arrives: ``(1, bytes)`` for stdout, ``(2, bytes)`` for stderr."""
        while not self._done.is_set():
            event = await self._queue.get()
            if isinstance(event, Data):
                self._conn._framed.consumed(self.stream, len(event.data))
                yield event.channel, event.data
            else:
                self._finish(event)

    def _finish(self, event: Message | Data | TetherError) -> None:
        if isinstance(event, Exit):
            self._exit = _exit_info(event)
        elif isinstance(event, Error):
            self._error = from_wire(event.code, event.message)
        elif isinstance(event, TetherError):
            self._error = event
        self._done.set()
        self._conn._end_stream(self.stream)

    async def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (waits for flow-control credit)."""
        await self._conn._framed.send_data(self.stream, 0, data)

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
        if not self._done.is_set():
            self._conn._abandon(self.stream)


class Connection:
    """An authenticated connection to one tether server."""

    def __init__(self, framed: FramedConnection, info: ServerInfo) -> None:
        self._framed = framed
        self.server = info
        self._procs: dict[int, Process] = {}
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

    def _abandon(self, stream: int) -> None:
        """Give up on a stream early: the server kills its process group."""
        self._end_stream(stream)

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
        if self._failure is not None:
            raise self._failure
        argv = [cmd] if isinstance(cmd, str) else list(cmd)
        stream = self._framed.proto.next_stream_id()
        proc = Process(self, stream, argv)
        self._procs[stream] = proc
        self._framed.send(
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
        writer = asyncio.create_task(_feed(proc, input)) if input else None
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


def _check_host(home: Path, host: str, port: int, fp: str, accept_new: bool,
                confirm: Confirm | None) -> None:
    """Pin the server's fingerprint, SSH-style: known, new (ask or accept), or changed (refuse)."""
    known = lookup_known_host(home, host, port)
    if known == fp:
        return
    key = host_key(host, port)
    if known is not None:
        raise HostChanged(
            f"THE SERVER'S IDENTITY HAS CHANGED for {key}: expected {known}, got {fp}. "
            f"Someone may be intercepting the connection, or the server got a new identity. "
            f"If you know why, remove the line for {key} from {known_hosts_path(home)} and "
            f"connect again."
        )
    if accept_new or (confirm is not None and confirm(key, fp)):
        add_known_host(home, host, port, fp)
        return
    raise HostUnknown(
        f"the server {key} is not known (fingerprint {fp}); "
        f"check it with the server's admin, then connect with --accept-new"
    )


async def _open(
    host: str,
    port: int,
    home: Path,
    accept_new: bool,
    plaintext: bool,
    confirm: Confirm | None,
    timeout: float,
) -> Connection:
    from tether.tls import client_context

    identity = None if plaintext else load_identity(home)
    ctx = None if identity is None else client_context(identity)
    with translated():
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=ctx, server_hostname="tether" if ctx else None,
                limit=1024 * 1024,
            ),
            timeout,
        )
    framed = FramedConnection(reader, writer, Role.CLIENT)
    try:
        if identity is not None:
            server_fp = fingerprint(framed.peer_cert or b"")
            _check_host(home, host, port, server_fp, accept_new, confirm)
        framed.send(Hello(versions=list(PROTOCOL_VERSIONS), software=f"tether/{__version__}"))
        await framed.drain()
        try:
            welcome = await asyncio.wait_for(framed.next_event(), timeout)
        except (NotAuthorized, ConnectionBroken) as exc:
            if identity is None:
                raise
            raise NotAuthorized(
                f"not authorized: the server refused this client's identity "
                f"{identity.fingerprint} (give the server's admin the line `tether id` prints)"
            ) from exc
        if isinstance(welcome, Error):
            error = from_wire(welcome.code, welcome.message)
            if isinstance(error, NotAuthorized) and identity is not None:
                error = NotAuthorized(f"not authorized: {welcome.message}")
            raise error
        if not isinstance(welcome, Welcome):
            raise RemoteProtocolError(f"expected welcome, got {welcome!r}"[:200])
    except BaseException:
        await framed.close()
        raise
    info = ServerInfo(
        welcome.server_name, welcome.platform, welcome.encoding, welcome.software,
        fingerprint(framed.peer_cert) if framed.peer_cert else "plaintext",
        welcome.client_name, welcome.permissions,
    )
    return Connection(framed, info)


class connect:  # used like a function: `async with tether.connect(...)`
    """Connect to a tether server: ``await tether.connect(...)`` or ``async with``."""

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
    ) -> None:
        self._args = (host, port, home_dir(home), accept_new, plaintext, confirm, timeout)
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
