"""The client's side of the handshake, shared by the asyncio API and the blocking one-shot
client (so it imports neither asyncio nor anything heavy): the hello it sends, and what the
server's answer means."""

from __future__ import annotations

from tether.errors import NotAuthorized, RemoteProtocolError, from_wire
from tether.protocol.connection import PROTOCOL_VERSIONS
from tether.protocol.messages import Data, Error, Hello, Message, Welcome
from tether.version import __version__


def hello() -> Hello:
    return Hello(versions=list(PROTOCOL_VERSIONS), software=f"tether/{__version__}")


def refused(client_fingerprint: str) -> NotAuthorized:
    """The error for a TLS alert or reset after the hello: in TLS 1.3 the client's handshake
    ends before the server has checked its certificate, so a refusal shows up only then."""
    return NotAuthorized(
        f"not authorized: the server refused this client's identity "
        f"{client_fingerprint} (give the server's admin the line `tether id` prints)"
    )


def welcome_of(event: Message | Data, authenticated: bool) -> Welcome:
    """The server's ``welcome``, or the error its answer stands for."""
    if isinstance(event, Error):
        error = from_wire(event.code, event.message)
        if isinstance(error, NotAuthorized) and authenticated:
            error = NotAuthorized(f"not authorized: {event.message}")
        raise error
    if not isinstance(event, Welcome):
        raise RemoteProtocolError(f"expected welcome, got {event!r}"[:200])
    return event
