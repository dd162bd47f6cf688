"""``tether run``: stream a remote command's output, forward stdin and signals, mirror its status.

On a terminal, output is decoded with the server's encoding (``--encoding`` overrides) and
re-encoded for the local terminal, undecodable bytes replaced; into a pipe or file it passes
through as raw bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading

from tether.cli.shared import (
    FORWARDED_SIGNALS,
    GIVE_UP,
    STDIN_CHUNK,
    RunOptions,
    confirm_on_tty,
    output_sinks,
    timed_out,
)
from tether.client.api import Connection, Process, connect
from tether.errors import TetherError

__all__ = ["FORWARDED_SIGNALS", "RunOptions", "SignalRelay", "confirm_on_tty", "run_main"]


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
    opts.check()
    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(opts.host, opts.port, home=opts.home, accept_new=opts.accept_new,
                       plaintext=opts.plaintext, confirm=confirm,
                       keepalive=opts.keepalive) as conn:
        return await _execute(conn, opts)


class SignalRelay:
    """Local signals for the remote command: each is forwarded to its process group. A second
    Ctrl-C, or a SIGTERM/SIGHUP the command has not obeyed within ``GIVE_UP`` seconds, makes
    the client give up: it leaves, which kills the remote group, and exits 128+N."""

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
        delay = 0.0 if sig == signal.SIGINT else GIVE_UP
        self.loop.call_later(delay, self._give_up, 128 + sig)

    def _give_up(self, code: int) -> None:
        if self.exit_code is None and self.main is not None:
            self.exit_code = code
            self.main.cancel()


async def _execute(conn: Connection, opts: RunOptions) -> int:
    proc = await conn.start(opts.remote_command, cwd=opts.cwd, env=opts.env, timeout=opts.timeout,
                            stdin=opts.stdin)
    loop = asyncio.get_running_loop()
    relay = SignalRelay(proc)
    relay.install()
    if opts.stdin:
        threading.Thread(target=_stdin_pump, args=(loop, proc), daemon=True).start()
    sinks = output_sinks(conn.server.encoding, opts.encoding)
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
        return timed_out(opts.timeout)
    return info.status


def run_main(opts: RunOptions) -> int:
    from tether.cli.main import fail

    try:
        return asyncio.run(_run(opts))
    except TetherError as exc:
        fail(exc)
    except BrokenPipeError:
        return 141
