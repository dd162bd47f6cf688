"""The one exit policy of the ``tether`` console script: every command — the click commands and
the one-shot ``tether run`` alike — runs inside :func:`run_command`, which alone turns what
happened into an exit status and at most one line on stderr.

=============================================  ======  =========================================
what happened                                  status  shown as
=============================================  ======  =========================================
the command returned N (a remote status)       N       (nothing)
:class:`~tether.errors.UsageError`, a click    2       ``tether: …`` / click's usage message
usage error
:class:`~tether.errors.ConfigError`            1       ``tether: …``
a tether error                                 table   ``tether: …`` (:data:`EXIT_STATUSES`)
stdout closed under us (``BrokenPipeError``)   141     (nothing: like a shell's SIGPIPE)
Ctrl-C (``KeyboardInterrupt``)                 130     (nothing)
anything else: a bug                           1       ``tether: internal error: …``
=============================================  ======  =========================================

``--debug`` (``TETHER_DEBUG``) adds the traceback. Light on purpose: the one-shot path imports
this, so no click (looked up in ``sys.modules`` only when click is already loaded), no asyncio.
"""

from __future__ import annotations

import contextlib
import os
import sys

from tether.cli.escape import printable
from tether.errors import (
    ConfigError,
    IdentityError,
    RemoteError,
    SpawnFailed,
    TetherError,
    UsageError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

USAGE = 2
INTERNAL = 1
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a pipeline's writer stopped by it
INTERRUPTED = 130  # 128 + SIGINT
CONNECTION = 255  # the connection or authentication failed (as ssh)

# A tether error's exit status: the first class it is an instance of, in this order.
EXIT_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, USAGE),
    (ConfigError, 1),
    (SpawnFailed, 127),  # the command could not be started (as a shell's "not found")
    (RemoteError, 1),  # refused or failed; the connection was fine
    (IdentityError, 1),  # our own identity is missing or unreadable
    (TetherError, CONNECTION),
    (OSError, CONNECTION),
)


def exit_status(exc: BaseException) -> int:
    """The exit status for an error that ended a command (:data:`EXIT_STATUSES`)."""
    for cls, status in EXIT_STATUSES:
        if isinstance(exc, cls):
            return status
    return INTERNAL


def debugging() -> bool:
    return bool(os.environ.get("TETHER_DEBUG")) or "--debug" in sys.argv[1:2]


def error_line(exc: BaseException) -> str:
    """The one line an error is shown as (a traceback too when debugging)."""
    if debugging():
        print_traceback(exc)
    return f"tether: {printable(str(exc) or exc.__class__.__name__)}"


def internal_error_line(exc: BaseException) -> str:
    """A bug is still one line, with the way to see more."""
    return (f"tether: internal error: {exc.__class__.__name__}: {printable(exc)} "
            f"(run with --debug for the traceback)")


def print_traceback(exc: BaseException) -> None:
    """``--debug``'s traceback, each line escaped (the exception may hold a peer's text)."""
    import traceback

    for line in "".join(traceback.format_exception(exc)).splitlines():
        say(printable(line))


def say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def fail(exc: BaseException) -> NoReturn:
    """Leave now as the policy says for ``exc`` (for code that cannot return a status)."""
    say(error_line(exc))
    sys.exit(exit_status(exc))


def status_of(exc: BaseException) -> int:
    """Say what ``exc`` needs said and return the exit status for it."""
    if isinstance(exc, BrokenPipeError):
        _quiet_stdout()
        return BROKEN_PIPE
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, TetherError | OSError):
        say(error_line(exc))
        return exit_status(exc)
    click_status = _click_status(exc)
    if click_status is not None:
        return click_status
    if debugging():
        print_traceback(exc)
    say(internal_error_line(exc))
    return INTERNAL


def _click_status(exc: BaseException) -> int | None:
    """click's own exceptions (usage errors, an aborted prompt), when click is loaded."""
    click = sys.modules.get("click")
    if click is None:
        return None
    if isinstance(exc, click.exceptions.ClickException):
        exc.show()
        return int(exc.exit_code)
    if isinstance(exc, click.exceptions.Abort):  # Ctrl-C or end of input at a prompt
        return INTERRUPTED if isinstance(exc.__context__, KeyboardInterrupt) else INTERNAL
    if isinstance(exc, click.exceptions.Exit):
        return int(exc.exit_code)
    return None


def run_command(body: Callable[[], int | None]) -> int:
    """Run one command and return its exit status: what it returned (None: 0), or what the
    policy says for how it failed. ``SystemExit`` passes through untouched."""
    try:
        return body() or 0
    except SystemExit:
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception | KeyboardInterrupt):
            raise
        return status_of(exc)


def _quiet_stdout() -> None:
    """stdout is gone: point it at /dev/null so the interpreter's last flush cannot complain."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def leave(code: int) -> NoReturn:
    """Flush and exit without the interpreter's teardown: freeing the modules of ssl, socket and
    the rest costs about 4 ms, a tenth of a whole ``tether run``, for memory the OS frees anyway.
    Nothing is left to write: the output sinks flush every chunk, and stdin is not ours."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed under us: 141 was decided
            stream.flush()
    os._exit(code)


__all__ = ["EXIT_STATUSES", "error_line", "exit_status", "fail", "internal_error_line",
           "leave", "run_command", "status_of"]
