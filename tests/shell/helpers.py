"""Helpers for the shell tests: ``tether serve`` subprocesses and a real terminal (pexpect).

The remote login shell is bash with ``HOME`` pointing at a directory of our own, whose
``.bash_profile`` sets a fixed prompt (:data:`PROMPT`), so a test always waits for the prompt
instead of sleeping.

Every ``tether shell`` in a terminal runs inside a small ``sh`` wrapper in the same pseudo-
terminal, which prints the terminal settings (``stty -g``) before the client starts and after it
ends, and the client's exit status; :meth:`Terminal.finish` reads them back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pexpect
import psutil

from support import TETHER, ServeProcess, start_serve

HOST = "127.0.0.1"
PROMPT = "tt$ "
EXPECT_TIMEOUT = 30.0  # generous: a loaded 2-core machine
CLI_TIMEOUT = 60.0
SETTLE = 30.0  # how long a remote process may take to start, stop or notice, under load

BASH_PROFILE = """\
PS1='tt$ '
PS2='> '
unset PROMPT_COMMAND
HISTFILE=/dev/null
bind 'set enable-bracketed-paste off' 2>/dev/null
"""




def base_env(**extra: str) -> dict[str, str]:
    """The environment of our subprocesses: UTF-8, no tether debug or home, no shell rc hooks."""
    drop = {"TETHER_DEBUG", "TETHER_HOME", "PYTHONIOENCODING", "BASH_ENV", "ENV",
            "PROMPT_COMMAND", "PS1", "COLUMNS", "LINES"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.update(extra)
    return env


def start_login_serve(home: Path, root: Path, log: Path, remote_home: Path) -> ServeProcess:
    """``tether serve`` whose login shells see ``remote_home`` (a fixed prompt) as HOME: the
    server's HOME is kept with ``--pass-env HOME`` (commands otherwise get the account's)."""
    return start_serve(home, root, log, "--pass-env", "HOME", env=base_env(HOME=str(remote_home)))


def shell_argv(port: int, *args: str, opts: Sequence[str] = ()) -> list[str]:
    return [*TETHER, "shell", "-p", str(port), "--accept-new", *opts, HOST, *args]


def line_shell(port: int, client_home: Path, script: bytes, *args: str,
               timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """``tether shell`` with ``script`` on a pipe: line mode."""
    return subprocess.run(
        shell_argv(port, *args), input=script, capture_output=True, timeout=timeout,
        env=base_env(TETHER_HOME=str(client_home)),
    )


@dataclass
class Outcome:
    """How a terminal session ended: the client's exit status, the wrapper's ``stty -g`` before
    and after, and what the terminal showed after the last prompt."""

    status: int
    before: str
    after: str
    tail: str


class Terminal:
    """``tether shell`` in a real pseudo-terminal, inside an ``sh`` wrapper (see the module
    docstring). Commands are typed and their output read back between prompts."""

    def __init__(self, port: int, client_home: Path, args: Sequence[str] = (),
                 term: str = "xterm-256color", rows: int = 24, cols: int = 160,
                 opts: Sequence[str] = ()) -> None:
        client = shlex.join(shell_argv(port, *args, opts=opts))
        script = (
            'printf "BEFORE:%s\\n" "$(stty -g)"; '
            f"{client}; "
            'printf "RC:%s\\n" "$?"; '
            'printf "AFTER:%s\\n" "$(stty -g)"'
        )
        self.child = pexpect.spawn(
            "/bin/sh", ["-c", script], env=base_env(TETHER_HOME=str(client_home), TERM=term),
            timeout=EXPECT_TIMEOUT, dimensions=(rows, cols), encoding="utf-8",
            codec_errors="replace", searchwindowsize=4096, use_poll=True,
        )
        self.child.expect(r"BEFORE:(\S+)\r\n")
        self.before_settings = self.match(1)

    def match(self, group: int = 0) -> str:
        m = self.child.match
        assert isinstance(m, re.Match), m
        return str(m.group(group))

    def prompt(self, timeout: float = EXPECT_TIMEOUT) -> str:
        """Wait for the next prompt; what came before it (CR LF made LF)."""
        self.child.expect_exact(PROMPT, timeout=timeout)
        return str(self.child.before).replace("\r\n", "\n")

    def type(self, line: str) -> None:
        """Type ``line`` and Enter, and wait for the remote echo of it."""
        self.child.send(line + "\r")
        self.child.expect_exact(line + "\r\n")

    def run(self, line: str) -> str:
        """Type a command, wait for the prompt after it: its output (LF line ends)."""
        self.type(line)
        return self.prompt()

    def key(self, char: str) -> None:
        """A control key: ``key("c")`` is Ctrl-C."""
        self.child.sendcontrol(char)

    def finish(self, timeout: float = EXPECT_TIMEOUT) -> Outcome:
        """Wait for the client to end; its status and the terminal settings after it."""
        self.child.expect(r"RC:(\d+)\r?\n", timeout=timeout)
        tail = str(self.child.before).replace("\r\n", "\n")
        status = int(self.match(1))
        self.child.expect(r"AFTER:(\S+)\r?\n", timeout=timeout)
        after = self.match(1)
        self.child.expect(pexpect.EOF, timeout=timeout)
        return Outcome(status, self.before_settings, after, tail)

    def close(self) -> None:
        if self.child.isalive():
            self.child.close(force=True)


def find_processes(argv: Sequence[str]) -> list[psutil.Process]:
    """Live (non-zombie) processes with exactly this command line."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.cmdline() == list(argv) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def yes_running(server: ServeProcess) -> bool:
    """Whether a ``yes`` runs under this server (a shell's child)."""
    try:
        children = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.Error:
        return False
    names = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                names.append(child.name())
    return "yes" in names
