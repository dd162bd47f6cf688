"""``tether run``: stream a remote command's output, forward stdin and signals, mirror its status.

On a terminal, output is decoded with the server's encoding (``--encoding`` overrides) and
re-encoded for the local terminal, undecodable bytes replaced; into a pipe or file it passes
through as raw bytes.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from tether.client.api import Connection, Process, connect
from tether.errors import BadRequest, TetherError

STDIN_CHUNK = 256 * 1024
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class RunOptions:
    home: str | None
    host: str
    port: int
    command: list[str]
    accept_new: bool = False
    plaintext: bool = False
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    encoding: str | None = None
    stdin: bool = True


class OutputSink:
    """Writes one remote channel to a local stream: raw bytes, or text re-encoded for it.

    Undecodable remote bytes and characters the local side cannot show both become
    replacement characters: never a crash.
    """

    def __init__(self, text: TextIO, encoding: str | None) -> None:
        self.binary: BinaryIO = text.buffer
        self.local = text.encoding or "utf-8"
        self.decoder = codecs.getincrementaldecoder(encoding)("replace") if encoding else None

    def write(self, data: bytes) -> None:
        if self.decoder is not None:
            data = self.decoder.decode(data).encode(self.local, "replace")
        self.binary.write(data)
        self.binary.flush()

    def close(self) -> None:
        if self.decoder is not None:
            self.binary.write(self.decoder.decode(b"", final=True).encode(self.local, "replace"))
            self.binary.flush()


def _terminal_encoding(stream: TextIO, server: str, override: str | None) -> str | None:
    """The encoding to decode a channel with, or None to pass bytes through: the server's on a
    terminal, ``--encoding`` wherever the output goes, raw bytes into pipes and files."""
    if override:
        return override
    return server if stream.isatty() and _known(server) else None


def _known(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True


def confirm_on_tty(key: str, fp: str) -> bool:
    """Ask on the terminal whether to trust a new server (like ssh's first-connection prompt)."""
    try:
        tty = open("/dev/tty", "r+")  # noqa: SIM115
    except OSError:
        return False
    with tty:
        tty.write(f"The server {key} is not known.\nIts fingerprint is {fp}.\n"
                  f"Trust it and connect (yes/no)? ")
        tty.flush()
        return tty.readline().strip().lower() in ("y", "yes")


def _stdin_pump(loop: asyncio.AbstractEventLoop, proc: Process) -> None:
    """Blocking reads of stdin in a daemon thread; each chunk waits for flow-control credit."""
    try:
        while data := os.read(0, STDIN_CHUNK):
            asyncio.run_coroutine_threadsafe(proc.write(data), loop).result()
    except (OSError, TetherError, RuntimeError):
        pass
    with contextlib.suppress(RuntimeError):
        asyncio.run_coroutine_threadsafe(proc.close_stdin(), loop).result()


async def _run(opts: RunOptions) -> int:
    if not opts.command or not any(a.strip() for a in opts.command):
        raise BadRequest("empty command: give a command after the host, e.g. tether run HOST -- ls")
    if opts.encoding and not _known(opts.encoding):
        raise BadRequest(f"unknown encoding {opts.encoding!r} (try utf-8, gbk, cp1252)")
    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(opts.host, opts.port, home=opts.home, accept_new=opts.accept_new,
                       plaintext=opts.plaintext, confirm=confirm) as conn:
        return await _execute(conn, opts)


class SignalRelay:
    """Local signals for the remote command: each is forwarded to its process group. A second
    Ctrl-C, or a SIGTERM/SIGHUP the command has not obeyed within ``GIVE_UP`` seconds, makes
    the client give up: it leaves, which kills the remote group, and exits 128+N."""

    GIVE_UP = 2.0

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.loop = asyncio.get_running_loop()
        self.main = asyncio.current_task()
        self.exit_code: int | None = None
        self.interrupted = False

    def install(self) -> None:
        for sig in FORWARDED_SIGNALS:
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def remove(self) -> None:
        for sig in FORWARDED_SIGNALS:
            self.loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self.loop.create_task(self.proc.signal(sig.name[3:]))
        if sig == signal.SIGINT and not self.interrupted:
            self.interrupted = True  # the first Ctrl-C is the command's to handle
            return
        delay = 0.0 if sig == signal.SIGINT else self.GIVE_UP
        self.loop.call_later(delay, self._give_up, 128 + sig)

    def _give_up(self, code: int) -> None:
        if self.exit_code is None and self.main is not None:
            self.exit_code = code
            self.main.cancel()


async def _execute(conn: Connection, opts: RunOptions) -> int:
    cmd: str | list[str] = opts.command[0] if len(opts.command) == 1 else opts.command
    proc = await conn.start(cmd, cwd=opts.cwd, env=opts.env, timeout=opts.timeout,
                            stdin=opts.stdin)
    loop = asyncio.get_running_loop()
    relay = SignalRelay(proc)
    relay.install()
    if opts.stdin:
        threading.Thread(target=_stdin_pump, args=(loop, proc), daemon=True).start()
    server_enc = conn.server.encoding
    sinks = {
        1: OutputSink(sys.stdout, _terminal_encoding(sys.stdout, server_enc, opts.encoding)),
        2: OutputSink(sys.stderr, _terminal_encoding(sys.stderr, server_enc, opts.encoding)),
    }
    try:
        async for channel, data in proc:
            sinks[channel].write(data)
        info = await proc.wait()
    except asyncio.CancelledError:
        if relay.exit_code is None:
            raise
        return relay.exit_code  # gave up: leaving the connection kills the remote group
    finally:
        relay.remove()
        for sink in sinks.values():
            sink.close()
    if info.timed_out:
        print(f"tether: command timed out after {opts.timeout:g} s; its process group was "
              f"killed", file=sys.stderr)
        return 124
    return info.status


def run_main(opts: RunOptions) -> int:
    from tether.cli.main import fail

    try:
        return asyncio.run(_run(opts))
    except TetherError as exc:
        fail(exc)
    except BrokenPipeError:
        return 141
