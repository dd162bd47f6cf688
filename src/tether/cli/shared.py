"""What both ``tether run`` paths share — the click/asyncio one (``cli/run.py``) and the
synchronous fast path (``cli/oneshot.py``) — so that they behave the same: the parsed options
and their checks, output sinks, the trust prompt. (The option table is :mod:`tether.cli.options`,
signals and statuses :mod:`tether.cli.runpolicy`, errors :mod:`tether.cli.policy`.)

Light on purpose: no click, no asyncio, no typing at run time.
"""

from __future__ import annotations

import codecs
import sys

from tether.defaults import CONNECT_TIMEOUT
from tether.errors import BadRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import BinaryIO, TextIO

class RunOptions:
    """What ``tether run`` was asked to do (after option parsing)."""

    def __init__(self, *, home: str | None, host: str, port: int, command: list[str],
                 accept_new: bool = False, plaintext: bool = False, cwd: str | None = None,
                 env: dict[str, str] | None = None, timeout: float | None = None,
                 encoding: str | None = None, stdin: bool = True,
                 keepalive: float = 0.0, connect_timeout: float = CONNECT_TIMEOUT,
                 mux: str | None = None, mux_persist: float = 60.0,
                 local_forwards: Sequence[str] = (), remote_forwards: Sequence[str] = (),
                 dynamic_forwards: Sequence[str] = (), via: Sequence[str] = ()) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.command = command
        self.accept_new = accept_new
        self.plaintext = plaintext
        self.cwd = cwd
        self.env = env or {}
        self.timeout = timeout
        self.encoding = encoding
        self.stdin = stdin
        self.keepalive = keepalive  # seconds of server silence before a ping (0: off)
        self.connect_timeout = connect_timeout  # connect + TLS + welcome, seconds
        self.mux = mux  # "auto", "no", or None: the inventory host's setting, else a running
        # mux is used if there is one ("existing")
        self.mux_persist = mux_persist
        self.local_forwards = list(local_forwards)  # -L, -R, -D as written (cli/forward.py)
        self.remote_forwards = list(remote_forwards)
        self.dynamic_forwards = list(dynamic_forwards)
        self.via = list(via)  # jump hosts

    def check(self) -> None:
        """Refuse, before connecting, what the server would refuse anyway."""
        if not self.command or not any(a.strip() for a in self.command):
            raise BadRequest("empty command: give a command after the host, "
                             "e.g. tether run HOST -- ls")
        if self.encoding and not known_encoding(self.encoding):
            raise BadRequest(f"unknown encoding {self.encoding!r} (try utf-8, gbk, cp1252)")

    @property
    def remote_command(self) -> str | list[str]:
        """One argument runs through the remote shell; several run as an argv."""
        return self.command[0] if len(self.command) == 1 else self.command


def split_remote(arg: str) -> tuple[str, str]:
    """``HOST:PATH`` (``[v6addr]:PATH`` too) into its parts; an empty path means the root."""
    if arg.startswith("["):
        host, sep, rest = arg[1:].partition("]:")
        if not sep:
            raise BadRequest(f"{arg!r} is not [HOST]:PATH")
        return host, rest or "."
    host, sep, path = arg.partition(":")
    if not sep or not host or "/" in host:
        raise BadRequest(f"{arg!r} is not HOST:PATH")
    return host, path or "."


def parse_env(items: tuple[str, ...] | list[str]) -> dict[str, str] | None:
    """``--env K=V`` items as a mapping; None if one is not ``K=V``."""
    variables = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return None
        variables[key] = value
    return variables


# --- output -------------------------------------------------------------------------------------


class OutputSink:
    """Writes one remote channel to a local stream: raw bytes, or text re-encoded for it.

    Undecodable remote bytes and characters the local side cannot show both become
    replacement characters: never a crash.
    """

    def __init__(self, text: TextIO, encoding: str | None) -> None:
        self.binary: BinaryIO = text.buffer
        self.local = text.encoding or "utf-8"
        self.decoder = codecs.getincrementaldecoder(encoding)("replace") if encoding else None

    def write(self, data: bytes | bytearray) -> None:
        if self.decoder is not None:
            data = self.decoder.decode(data).encode(self.local, "replace")
        self.binary.write(data)
        self.binary.flush()

    def close(self) -> None:
        if self.decoder is not None:
            self.binary.write(self.decoder.decode(b"", final=True).encode(self.local, "replace"))
            self.binary.flush()


def output_sinks(server_encoding: str, override: str | None) -> dict[int, OutputSink]:
    """The sinks for channels 1 and 2 (stdout and stderr)."""
    return {
        1: OutputSink(sys.stdout, terminal_encoding(sys.stdout, server_encoding, override)),
        2: OutputSink(sys.stderr, terminal_encoding(sys.stderr, server_encoding, override)),
    }


def terminal_encoding(stream: TextIO, server: str, override: str | None) -> str | None:
    """The encoding to decode a channel with, or None to pass bytes through: the server's on a
    terminal, ``--encoding`` wherever the output goes, raw bytes into pipes and files."""
    if override:
        return override
    return server if stream.isatty() and known_encoding(server) else None


def known_encoding(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True


def confirm_on_tty(key: str, fp: str) -> bool:
    """Ask on the terminal whether to trust a new server (like ssh's first-connection prompt)."""
    try:  # unbuffered bytes: a text "r+" stream would try to seek the terminal, and fail
        tty = open("/dev/tty", "r+b", buffering=0)  # noqa: SIM115
    except OSError:
        return False
    with tty:
        tty.write(f"The server {key} is not known.\nIts fingerprint is {fp}.\n"
                  f"Trust it and connect (yes/no)? ".encode())
        answer = tty.readline().decode(errors="replace")
    return answer.strip().lower() in ("y", "yes")


def resume_note(path: str, offset: int) -> str:
    """The line saying a file continued an interrupted transfer instead of starting over (the
    one-host put/get and the fleet's per-host lines say it alike)."""
    from tether.cli.escape import printable

    return f"tether: {printable(path)}: resumed at {offset} bytes"


def skipped_note(path: str, target: str) -> str:
    """The line saying ``--safe-links`` left out a symlink that leads out of its tree."""
    from tether.cli.escape import printable

    return (f"tether: {printable(path)}: symlink to {printable(target)} leaves the tree; "
            f"skipped (--safe-links)")
