"""Lower-layer failures (OSError, ssl errors, EOF) become tether errors here, at one boundary,
for the asyncio adapter and the blocking one-shot client alike (so this imports no asyncio)."""

from __future__ import annotations

import contextlib
import socket
import ssl

from tether.errors import (
    ConnectionBroken,
    ConnectionFailed,
    ConnectionRefused,
    NotAuthorized,
    TetherError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

_AUTH_ALERTS = ("UNKNOWN_CA", "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")


def translate(exc: BaseException) -> TetherError:
    """The tether error an I/O failure stands for."""
    if isinstance(exc, TetherError):
        return exc
    if isinstance(exc, ssl.SSLError) and any(a in str(exc).upper() for a in _AUTH_ALERTS):
        return NotAuthorized("the server refused this client's identity")
    if isinstance(exc, ssl.SSLError):
        return ConnectionBroken(f"TLS error: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError) or _all_refused(exc):
        return ConnectionRefused("connection refused")
    if isinstance(exc, EOFError):  # asyncio.IncompleteReadError is one
        return ConnectionBroken("connection closed by peer")
    if isinstance(exc, ConnectionError):
        return ConnectionBroken(f"connection lost: {exc.strerror or exc.__class__.__name__}")
    if isinstance(exc, TimeoutError):
        return ConnectionFailed("timed out")
    if isinstance(exc, OSError):
        return ConnectionFailed(exc.strerror or str(exc))
    return ConnectionBroken(str(exc) or exc.__class__.__name__)


def _all_refused(exc: BaseException) -> bool:
    """asyncio's (and the blocking client's) "Multiple exceptions: ..." when every address of
    a name (``localhost``: ::1 and 127.0.0.1) refused."""
    text = str(exc)
    return (isinstance(exc, OSError) and text.startswith("Multiple exceptions:")
            and text.count("Connection refused") == text.count("[Errno") > 0)


def _hint(host: str) -> str:
    """What a host that could not be reached may have meant (ssh and scp habits)."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and name and ":" not in name:
        return f" (a port goes in -p: try -p {port} {name})"
    return ""


def reaching(exc: BaseException, host: str, port: int) -> TetherError:
    """The tether error for failing to reach ``host``, naming it (a message without the host
    is useless in a loop over many)."""
    error = translate(exc)
    if isinstance(error, ConnectionFailed) and not isinstance(error, ConnectionBroken):
        what = str(error)
        if isinstance(exc, socket.gaierror):
            what = f"cannot resolve the name: {exc.strerror or exc}"
        error = type(error)(f"{host} port {port}: {what}{_hint(host)}")
    return error


@contextlib.contextmanager
def connecting(host: str, port: int) -> Iterator[None]:
    """Around making a connection: failures become tether errors that name the host."""
    try:
        yield
    except (OSError, EOFError) as exc:
        raise reaching(exc, host, port) from exc


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise translate(exc) from exc
