"""Which run a command or a line-mode shell gets on this platform, and the platform's name for
``welcome``: the Windows classes (server/winexec.py, server/winshell.py) are imported only on
Windows, so a Unix server never loads them."""

from __future__ import annotations

import platform
import sys

from tether.net.framed import FramedConnection
from tether.server.exec import CommandRun, ExecPolicy, SpawnSpec
from tether.server.shell import LineRun


def command_run(conn: FramedConnection, stream: int, spec: SpawnSpec,
                policy: ExecPolicy) -> CommandRun:
    """The run for an ``exec``: server/exec.py's on Unix, server/winexec.py's on Windows."""
    if sys.platform == "win32":
        from tether.server.winexec import WinCommandRun

        return WinCommandRun(conn, stream, spec, policy)
    return CommandRun(conn, stream, spec, policy)


def line_run(conn: FramedConnection, stream: int, spec: SpawnSpec,
             policy: ExecPolicy) -> CommandRun:
    """The run for a line-mode ``shell``: server/shell.py's on Unix, server/winshell.py's
    (cmd.exe, a line at a time) on Windows."""
    if sys.platform == "win32":
        from tether.server.winshell import WinLineRun

        return WinLineRun(conn, stream, spec, policy)
    return LineRun(conn, stream, spec, policy)


def platform_name() -> str:
    """The platform name sent in ``hello``: on Windows from sys.platform, since platform.system()
    asks WMI there (Python 3.12+), which is slow and crashes under Wine 8 (an unimplemented
    propsys.dll function)."""
    return "windows" if sys.platform == "win32" else platform.system().lower()
