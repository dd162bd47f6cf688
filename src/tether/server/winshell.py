"""Line mode on a Windows server: one persistent cmd.exe, one line at a time.

The Unix line mode (server/shell.py) writes ``eval 'LINE'`` and its markers into the shell as a
script. cmd.exe offers neither a safe quoting for a line nor a way to read a status after a line
whatever its ``&``, ``if`` or ``for`` do, so each line becomes a small batch file that the
persistent cmd.exe (``/d /q /k rem``: no AutoRun, echo off, no banner) runs with stdin from NUL::

    @(call )                       errorlevel 0, so a line of builtins reports 0
    @call :tether_line             the line, as a subroutine: ``exit /b N`` ends only it
    @echo.&echo TOKEN %errorlevel%   the stdout marker, \\r\\nTOKEN STATUS\\r\\n
    @>&2 echo.                     the stderr marker, \\r\\nTOKEN\\r\\n
    @>&2 echo TOKEN
    @goto :eof
    :tether_line
    LINE

``cd`` and ``set`` persist (no ``setlocal``); ``exit N`` ends the shell, whose ``exit`` then
carries N. The line is a line of a batch file: ``%%i`` in ``for``, ``%VAR%`` expanded, as in a
``.cmd`` script (the Unix line mode is a shell script too). It is written in the console code
page, which cmd.exe reads batch files in; a line that code page cannot carry, or longer than
cmd.exe takes, becomes a line that says so on stderr and fails with status 1 (the shell goes on).

The next line is written only once the previous one's markers arrived: cmd.exe under Wine reads
a pipe by blocks and drops what follows the first line of a block, and a line written while
another runs would wait in the pipe anyway. Credit for a held line is granted when it is
written, so the client's window bounds what waits here.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path

from tether.errors import BadRequest
from tether.net.framed import FramedConnection
from tether.protocol import Status
from tether.server.exec import CommandRun, ExecPolicy, SpawnSpec
from tether.server.shell import MAX_LINE, LineRun, MarkerFilter

assert sys.platform == "win32"

from tether.server import winproc  # noqa: E402  (Windows only, after the platform check)
from tether.server.winexec import WinCommandRun  # noqa: E402

CRLF = b"\r\n"
CMD_LINE_MAX = 8191  # characters in one cmd.exe line; longer ones are cut or refused by it


def _failing(message: str) -> bytes:
    """A batch line that writes ``tether: MESSAGE`` on stderr and fails with status 1."""
    return b">&2 echo tether: " + message.encode("ascii") + b"&exit /b 1"


def batch(token: bytes, line: bytes) -> bytes:
    """The batch file one line runs as (see the module docstring)."""
    return CRLF.join([
        b"@(call )", b"@call :tether_line",
        b"@echo.&echo " + token + b" %errorlevel%",
        b"@>&2 echo.", b"@>&2 echo " + token,
        b"@goto :eof", b":tether_line", line, b"",
    ])


class WinLineRun(LineRun, WinCommandRun):
    """cmd.exe fed one line at a time, each answered by a ``status`` (32-bit unsigned, as
    ``exit`` carries a Windows exit code)."""

    def __init__(self, conn: FramedConnection, stream: int, spec: SpawnSpec,
                 policy: ExecPolicy) -> None:
        super().__init__(conn, stream, spec, policy)
        self.filters = {1: MarkerFilter(self.token, True, CRLF),
                        2: MarkerFilter(self.token, False, CRLF)}
        self.code_page = winproc.console_encoding()
        self.held: deque[tuple[bytes, int]] = deque()  # lines not yet written, with their credit
        self.busy = False  # a line was written and its markers have not both arrived
        self.ending = False  # the client's eof came: end once the held lines have run
        self.last = 0  # the last line's status, as %errorlevel% said it: the shell's at the end
        self.dir = Path(tempfile.mkdtemp(prefix="tether-shell-"))
        self.script = self.dir / "line.cmd"

    def feed(self, data: bytes | bytearray) -> None:
        self.pending += data
        if len(self.pending) > MAX_LINE and b"\n" not in self.pending:
            raise BadRequest(f"a line longer than {MAX_LINE} bytes")
        *lines, self.pending = self.pending.split(b"\n")
        if not lines:
            self.conn.consumed(self.stream, len(data))  # a partial line: bounded by MAX_LINE
            return
        # this chunk's bytes of complete lines are credited when the last of them is written
        self.conn.consumed(self.stream, len(self.pending))
        for line in lines[:-1]:
            self.held.append((line, 0))
        self.held.append((lines[-1], len(data) - len(self.pending)))
        self._next()

    def close_stdin(self) -> None:
        if not self.ending:
            self.ending = True
            if self.pending.strip():
                self.held.append((self.pending, 0))
            self.pending = b""
            self._next()

    def _next(self) -> None:
        """Write the next held line, or at the end the shell's exit, unless a line runs."""
        while not self.busy and self.held:
            line, credit = self.held.popleft()
            line = line.replace(b"\0", b"").rstrip(b"\r")
            if not line.strip():
                self.conn.consumed(self.stream, credit)
                continue
            self.script.write_bytes(batch(self.token, self._in_code_page(line)))
            self.sent += 1
            self.busy = True
            self.queue_stdin(b'"' + str(self.script).encode(self.code_page) + b'" <NUL' + CRLF,
                             credit)
        if not self.busy and not self.held and self.ending and not self._stdin_eof:
            self.queue_stdin(b"exit %d" % self.last + CRLF, 0)
            CommandRun.close_stdin(self)

    def _in_code_page(self, line: bytes) -> bytes:
        """The client's UTF-8 line in the code page cmd.exe reads batch files in. A line that
        cannot be becomes one that says why on stderr and fails: never a line with characters
        replaced (``del 文?.txt`` must not become a wildcard), nor one cmd.exe would cut."""
        try:
            text = line.decode("utf-8")
            encoded = text.encode(self.code_page)
        except UnicodeError:
            return _failing(f"the line has characters the server's code page ({self.code_page}) "
                            f"cannot carry")
        if len(text) > CMD_LINE_MAX:
            return _failing(f"the line is longer than cmd.exe's {CMD_LINE_MAX} characters")
        return encoded

    def _report(self) -> None:
        while self.reported < min(len(self.seen[1]), len(self.seen[2])):
            self.last = self.seen[1][self.reported]
            self.reported += 1
            self.conn.send(Status(index=self.reported, status=self.last & 0xFFFFFFFF,
                                  stream=self.stream))
        if self.busy and self.reported == self.sent:
            self.busy = False
            self._next()

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
