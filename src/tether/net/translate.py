"""Lower-layer failures (OSError, ssl errors, EOF) become tether errors here, at one boundary,
for the asyncio adapter and the blocking one-shot client alike (so this imports no asyncio)."""

from __future__ import annotations

import contextlib
import ssl

from tether.errors import ConnectionBroken, ConnectionFailed, NotAuthorized, TetherError

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
    if isinstance(exc, EOFError):  # asyncio.IncompleteReadError is one
        return ConnectionBroken("connection closed by peer")
    if isinstance(exc, ConnectionError):
        return ConnectionBroken(f"connection lost: {exc.strerror or exc.__class__.__name__}")
    if isinstance(exc, TimeoutError):
        return ConnectionFailed("timed out")
    if isinstance(exc, OSError):
        return ConnectionFailed(exc.strerror or str(exc))
    return ConnectionBroken(str(exc) or exc.__class__.__name__)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise translate(exc) from exc
