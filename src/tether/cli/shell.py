"""``tether shell``: a remote terminal when stdin is one, line mode otherwise.

In terminal mode the local terminal is put in raw mode and always restored — on exit, on an
error, on a dropped connection, on SIGTERM or SIGHUP — and the window size follows SIGWINCH.
Output is written to the terminal from a thread, so a terminal that is slow or not reading never
blocks the event loop: keystrokes (Ctrl-C) still reach the remote side.
In line mode each stdin line is one command in one persistent remote shell; a command that fails
is reported on stderr with its line number and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator

from tether.cli.escape import printable
from tether.cli.shared import confirm_on_tty
from tether.client.api import Connection, ShellProcess, connect
from tether.defaults import CONNECT_TIMEOUT
from tether.errors import ConnectionBroken, NoTerminal

STDIN_CHUNK = 64 * 1024


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode for the duration; the saved settings come back whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _size() -> tuple[int, int]:
    try:
        cols, rows = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 24, 80
    return rows, cols


class _TerminalOutput:
    """Writes to the terminal from a daemon thread, one chunk at a time.

    Awaiting each chunk keeps the output back-pressured (nothing more is taken from the server
    until the terminal took it), while the event loop stays free for keys, resizes and signals.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.chunks: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]] | None] = (
            queue.SimpleQueue())
        threading.Thread(target=self._run, daemon=True, name="tether-terminal").start()

    def _run(self) -> None:
        while (item := self.chunks.get()) is not None:
            data, done = item
            failure: OSError | None = None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as exc:
                failure = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self.loop.call_soon_threadsafe(_resolve, done, failure)

    async def write(self, data: bytes) -> None:
        done = self.loop.create_future()
        self.chunks.put((data, done))
        await done

    def close(self) -> None:
        self.chunks.put(None)


def _resolve(done: asyncio.Future[None], failure: OSError | None) -> None:
    if done.done():
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)


async def _terminal_session(conn: Connection, command: list[str]) -> int:
    rows, cols = _size()
    proc = await conn.shell(command[0] if len(command) == 1 else command or None,
                            term=os.environ.get("TERM", "xterm"), rows=rows, cols=cols)
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    loop.add_reader(0, lambda: keys.put_nowait(os.read(0, STDIN_CHUNK)))
    loop.add_signal_handler(signal.SIGWINCH, lambda: loop.create_task(proc.resize(*_size())))
    main = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, main.cancel if main else (lambda: None))
    sender = loop.create_task(_send_keys(proc, keys))
    output = _TerminalOutput(1)
    try:
        with raw_terminal(0):
            async for _channel, data in proc:
                await output.write(data)
            return (await proc.wait()).status
    finally:
        output.close()
        sender.cancel()
        loop.remove_reader(0)
        for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _send_keys(proc: ShellProcess, keys: asyncio.Queue[bytes]) -> None:
    while data := await keys.get():
        await proc.write(data)


def _read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
    """Blocking line reads of stdin in a daemon thread (stdin may be a file, a pipe or a
    terminal). Raw ``os.read``, not ``sys.stdin``: a daemon thread blocked inside a buffered
    reader's lock aborts the interpreter at exit."""
    pending = b""
    with contextlib.suppress(OSError, RuntimeError):
        while chunk := os.read(0, STDIN_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                loop.call_soon_threadsafe(queue.put_nowait, line + b"\n")
        if pending:
            loop.call_soon_threadsafe(queue.put_nowait, pending)
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def _line_session(conn: Connection) -> int:
    shell = await conn.line_shell()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()
    threading.Thread(target=_read_lines, args=(loop, lines), daemon=True).start()
    number = 0
    async with shell:
        while (line := await lines.get()) is not None:
            number += 1
            command = line.decode(errors="replace").rstrip("\r\n")
            if not command.strip():
                continue
            result = await shell.run(command)
            sys.stdout.buffer.write(result.stdout)
            sys.stdout.buffer.flush()
            sys.stderr.buffer.write(result.stderr)
            sys.stderr.buffer.flush()
            if shell.exit is not None:
                return shell.exit.status
            if result.status:
                print(f"tether: line {number}: {command[:60]!r} exited with status "
                      f"{result.status}", file=sys.stderr, flush=True)
        return await shell.close()


async def _shell(host: str, port: int, home: str | None, accept_new: bool, plaintext: bool,
                 command: list[str], terminal: bool, keepalive: float,
                 connect_timeout: float, mux: tuple[str, float]) -> int:
    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(host, port, home=home, accept_new=accept_new, plaintext=plaintext,
                       confirm=confirm, keepalive=keepalive, timeout=connect_timeout,
                       mux=mux[0], mux_persist=mux[1]) as conn:
        if terminal:
            try:
                return await _terminal_session(conn, command)
            except NoTerminal as exc:
                if command:
                    raise
                print(f"tether: {printable(exc)}; continuing in line mode", file=sys.stderr,
                      flush=True)
                return await _line_session(conn)
        if command:
            from tether.errors import BadRequest

            raise BadRequest("a command needs a terminal (stdin is not one): use tether run")
        return await _line_session(conn)


def shell_main(host: str, port: int, home: str | None, accept_new: bool, plaintext: bool,
               command: list[str], force_lines: bool, keepalive: float = 0.0,
               connect_timeout: float = CONNECT_TIMEOUT,
               mux: tuple[str, float] = ("existing", 60.0)) -> int:
    """The shell's exit status; errors propagate to :mod:`tether.cli.policy`. ``mux``: the
    mode and the persist time (see :mod:`tether.client.mux`)."""
    terminal = sys.stdin.isatty() and sys.stdout.isatty() and not force_lines
    try:
        return asyncio.run(_shell(host, port, home, accept_new, plaintext, command, terminal,
                                  keepalive, connect_timeout, mux))
    except asyncio.CancelledError as exc:  # the connection went while the terminal waited
        raise ConnectionBroken("connection lost") from exc
