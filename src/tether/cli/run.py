"""``tether run`` on asyncio (the click front door): stream a remote command's output, forward
stdin and signals, mirror its status — as :mod:`tether.cli.runpolicy` decides, the same policy
the one-shot fast path (:mod:`tether.cli.oneshot`) follows.

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

from tether.cli.runpolicy import FORWARDED_SIGNALS, STDIN_CHUNK, RunPolicy, stdin_wanted
from tether.cli.shared import RunOptions, confirm_on_tty, output_sinks
from tether.client.api import Connection, Process, connect
from tether.errors import TetherError

__all__ = ["SignalRelay", "run_main"]


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
                       keepalive=opts.keepalive, timeout=opts.connect_timeout,
                       mux=opts.mux or "existing", mux_persist=opts.mux_persist) as conn:
        return await _execute(conn, opts)


class SignalRelay:
    """Local signals for the remote command, on asyncio, as :class:`RunPolicy` decides: each
    is forwarded; giving up cancels the main task with the policy's exit status."""

    def __init__(self, proc: Process, policy: RunPolicy) -> None:
        self.proc = proc
        self.policy = policy
        self.loop = asyncio.get_running_loop()
        self.main = asyncio.current_task()
        self.exit_code: int | None = None

    def install(self) -> None:
        for sig in FORWARDED_SIGNALS:
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def remove(self) -> None:
        for sig in FORWARDED_SIGNALS:
            self.loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        now = self.loop.time()
        self.loop.create_task(self.proc.signal(self.policy.on_signal(sig, now)))
        if self.policy.give_up is not None:
            when, code = self.policy.give_up
            self.loop.call_at(when, self._give_up, code)

    def _give_up(self, code: int) -> None:
        if self.exit_code is None and self.main is not None:
            self.exit_code = code
            self.main.cancel()


async def _execute(conn: Connection, opts: RunOptions) -> int:
    proc = await conn.start(opts.remote_command, cwd=opts.cwd, env=opts.env, timeout=opts.timeout,
                            stdin=opts.stdin)
    loop = asyncio.get_running_loop()
    policy = RunPolicy(opts.timeout)
    relay = SignalRelay(proc, policy)
    relay.install()
    if stdin_wanted(opts.stdin):
        threading.Thread(target=_stdin_pump, args=(loop, proc), daemon=True).start()
    elif opts.stdin:
        await proc.close_stdin()
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
    return policy.exit_status(info)


def run_main(opts: RunOptions) -> int:
    """The remote command's exit status; errors propagate to :mod:`tether.cli.policy`."""
    return asyncio.run(_run(opts))
