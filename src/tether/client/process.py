"""One remote stream as the asyncio API hands it out: :class:`StreamHandle` (events in order,
credit granted as they are taken), :class:`Process` (a command: stdin, output, :meth:`wait`),
and the results, :class:`RunResult` and :class:`ServerInfo`. :class:`ExitInfo` is the client
core's (shared with the one-shot CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether.client.core import ClientCore, ExitInfo
from tether.errors import ConnectionClosed, TetherError, from_wire
from tether.protocol import Data, Eof, Error, Exit, Message, Signal, Started

if TYPE_CHECKING:
    from typing import Protocol

    from tether.net.framed import FramedConnection

    class Connection(Protocol):  # what a stream needs of tether.client.api.Connection
        _framed: FramedConnection

        def _end_stream(self, stream: int) -> None: ...

STDOUT = 1
STDERR = 2
QUEUED_MESSAGES = 64  # messages other than DATA a stream holds unread before the reader waits


class _Joined(bytearray):
    """The payloads of consecutive DATA frames of one channel, joined while unread."""


class DecodedOutput:
    """``text`` and ``error_text`` for a result that holds a command's raw output and the
    server's output encoding (a finished run, one host's result of a fan-out)."""

    stdout: bytes
    stderr: bytes
    encoding: str

    @property
    def text(self) -> str:
        """stdout decoded with the server's output encoding (undecodable bytes replaced)."""
        return self.stdout.decode(self.encoding, "replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(self.encoding, "replace")


@dataclass(frozen=True)
class RunResult(DecodedOutput):
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



@dataclass
class ServerInfo:
    name: str
    platform: str
    encoding: str
    software: str
    fingerprint: str
    client_name: str
    permissions: list[str] = field(default_factory=list)
    user: str = ""  # the Unix account the server runs this connection's work as, if mapped


class StreamHandle:
    """One stream's events, in order; DATA is acknowledged (credit granted) as it is taken.

    What waits unread is bounded whatever the server sends: DATA by the flow-control window
    (credit is granted only as it is taken), and consecutive DATA of one channel is joined into
    one event, so a server cannot multiply the cost with tiny frames; other messages (listing
    entries, a line shell's statuses) at most :data:`QUEUED_MESSAGES`, after which
    :attr:`room` is clear and the connection's reader waits for the application to take some.
    """

    def __init__(self, conn: Connection, stream: int) -> None:
        self._conn = conn
        self.stream = stream
        self._events: deque[Message | Data | TetherError] = deque()
        self._arrived = asyncio.Event()
        self._messages = 0  # messages other than DATA in _events
        self.room = asyncio.Event()  # clear: the reader waits before delivering more
        self.room.set()
        self.ended = False
        self.failure: TetherError | None = None

    def _deliver(self, event: Message | Data | TetherError) -> None:
        if isinstance(event, TetherError):
            self.failure = event
        elif isinstance(event, Error):
            self.failure = from_wire(event.code, event.message)
        if isinstance(event, Data):
            last = self._events[-1] if self._events else None
            if isinstance(last, Data) and last.channel == event.channel:
                joined = last.data
                if not isinstance(joined, _Joined):
                    joined = _Joined(joined)
                    self._events[-1] = Data(self.stream, last.channel, joined)
                joined.extend(event.data)
                return
        elif not isinstance(event, TetherError):
            self._messages += 1
            if self._messages >= QUEUED_MESSAGES:
                self.room.clear()
        self._events.append(event)
        self._arrived.set()

    async def _take(self) -> Message | Data | TetherError:
        while not self._events:
            self._arrived.clear()
            await self._arrived.wait()
        event = self._events.popleft()
        if not isinstance(event, Data | TetherError):
            self._messages -= 1
            if self._messages < QUEUED_MESSAGES:
                self.room.set()
        return event

    async def next(self) -> Message | Data:
        """The next event; a stream error or a lost connection is raised."""
        event = await self._take()
        if isinstance(event, TetherError):
            self.ended = True
            raise event
        if isinstance(event, Data):
            self._conn._framed.consumed(self.stream, len(event.data))
        elif event.FINAL:
            self.ended = True
            self._conn._end_stream(self.stream)
            ClientCore.outcome(event)  # an error is raised here
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
        self.room.set()  # nobody will take the rest: never hold the reader for it


class Process(StreamHandle):
    """A running remote command: write stdin, iterate ``(channel, bytes)``, then :meth:`wait`."""

    def __init__(self, conn: Connection, stream: int, argv: list[str]) -> None:
        super().__init__(conn, stream)
        self.argv = argv
        self.pid: int | None = None
        self._exit: ExitInfo | None = None
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
                self._exit = ExitInfo.of(event)

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

    async def wait(self) -> ExitInfo:
        """Drain remaining output and return how the command ended (:class:`ExitInfo`); raises
        the server's error if it failed."""
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


__all__ = ["STDERR", "STDOUT", "ExitInfo", "Process", "RunResult", "ServerInfo", "StreamHandle"]
