"""What ``tether run`` does around a remote command, decided once for both front doors — the
click/asyncio one (:mod:`tether.cli.run`) and the one-shot fast path (:mod:`tether.cli.oneshot`):

- **signals**: Ctrl-C, SIGTERM and SIGHUP are forwarded to the remote process group as INT,
  TERM and HUP. The first Ctrl-C is the command's to handle; a second one gives up at once; a
  SIGTERM or SIGHUP the command has not obeyed within :data:`GIVE_UP` seconds gives up too.
  Giving up means leaving the connection (which kills the remote group) and exiting 128+N.
- **exit status**: the remote one mirrored (128+N for signal N), 124 after ``--timeout``.
- **stdin**: forwarded only if asked (not ``-n``) and there is one, read only while the stream
  has flow-control credit and little is queued, so a fast stdin cannot outrun the server.

The drivers only wire these decisions to their event loop (a select loop, or asyncio).
Light on purpose: no asyncio, no click.
"""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tether.client.core import ExitInfo

STDIN_CHUNK = 256 * 1024
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # as INT, TERM, HUP
GIVE_UP = 2.0
TIMED_OUT = 124


class RunPolicy:
    """One ``tether run``'s signal state: what to forward, and when (and how) to give up."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.interrupted = False
        self.give_up: tuple[float, int] | None = None  # (monotonic deadline, exit status)

    def on_signal(self, sig: int, now: float) -> str:
        """Note a local signal; the name to forward to the remote group (``INT``…)."""
        sig = signal.Signals(sig)
        if sig == signal.SIGINT and not self.interrupted:
            self.interrupted = True  # the first Ctrl-C is the command's to handle
        else:
            when = now + (0.0 if sig == signal.SIGINT else GIVE_UP)
            if self.give_up is None or when < self.give_up[0]:
                self.give_up = (when, 128 + sig)
        return sig.name[3:]

    def gave_up(self, now: float) -> int | None:
        """The exit status if the time to give up has come, else None."""
        if self.give_up is not None and now >= self.give_up[0]:
            return self.give_up[1]
        return None

    def exit_status(self, info: ExitInfo) -> int:
        """The local exit status for how the remote command ended (a timeout is said)."""
        if info.timed_out:
            print(f"tether: command timed out after {self.timeout:g} s; its process group "
                  f"was killed", file=sys.stderr)
            return TIMED_OUT
        return info.status


def stdin_wanted(forward: bool) -> bool:
    """Whether to forward stdin at all: asked for, and there is a stdin (fd 0 open)."""
    if not forward:
        return False
    try:
        os.fstat(0)
    except OSError:  # no stdin at all: end of input at once
        return False
    return True


def may_read_stdin(queued: int, window: int) -> bool:
    """Whether to read more stdin now: the stream has credit and little waits to be sent."""
    return window > 0 and queued < STDIN_CHUNK


__all__ = ["FORWARDED_SIGNALS", "GIVE_UP", "STDIN_CHUNK", "RunPolicy", "may_read_stdin",
           "stdin_wanted"]
