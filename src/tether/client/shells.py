"""Remote shells: :class:`ShellProcess` (a program in a remote pseudo-terminal) and
:class:`LineShell` (one persistent shell without a terminal, one command per call, each with
its own output and status). :meth:`tether.client.api.Connection.shell` and
:meth:`~tether.client.api.Connection.line_shell` open them.
"""

from __future__ import annotations

import asyncio
import contextlib

from tether.client.core import ExitInfo
from tether.client.process import STDOUT, Process, RunResult, StreamHandle
from tether.errors import BadRequest, ConnectionClosed, TetherError
from tether.protocol import Data, Eof, Exit, Resize, Status


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
        self.exit: ExitInfo | None = None

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
                self.exit = ExitInfo.of(event)
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
                        self.exit = ExitInfo.of(event)
            return self.exit.status

    async def __aenter__(self) -> LineShell:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.exit is None:
            self._handle.abandon()


__all__ = ["LineShell", "ShellProcess"]
