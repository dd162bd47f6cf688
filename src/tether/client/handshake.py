"""The client's side of the handshake, shared by the asyncio API and the blocking one-shot
client (so it imports neither asyncio nor anything heavy): the hello it sends, and what the
server's answer means."""

from __future__ import annotations

from tether.errors import NotAuthorized, RemoteProtocolError, from_wire
from tether.protocol.connection import PROTOCOL_VERSIONS
from tether.protocol.messages import Data, Error, Hello, Message, Welcome
from tether.version import __version__


def hello(user: str = "") -> Hello:
    """The hello; ``user`` asks for that account on the server (``user@host``)."""
    return Hello(versions=list(PROTOCOL_VERSIONS), software=f"tether/{__version__}", user=user)


def refused(client_fingerprint: str, ca_signed: bool = False) -> NotAuthorized:
    """The error for a TLS alert or reset after the hello: in TLS 1.3 the client's handshake
    ends before the server has checked its certificate, so a refusal shows up only then. A
    CA-signed certificate refused there was signed by a CA the server does not trust (every
    other check happens after the handshake and comes with the server's own reason)."""
    if ca_signed:
        return NotAuthorized(
            f"not authorized: the server does not trust the CA that signed this client's "
            f"certificate {client_fingerprint} (and has not authorized it)")
    return NotAuthorized(
        f"not authorized: the server refused this client's identity "
        f"{client_fingerprint} (give the server's admin the line `tether id` prints)"
    )


def welcome_of(event: Message | Data, authenticated: bool, user: str = "") -> Welcome:
    """The server's ``welcome``, or the error its answer stands for. A server that did not
    confirm the account asked for (``user``) is refused: an older server ignores the request
    and would run everything as itself."""
    if isinstance(event, Error):
        error = from_wire(event.code, event.message)
        if isinstance(error, NotAuthorized) and authenticated:
            error = NotAuthorized(f"not authorized: {event.message}")
        raise error
    if not isinstance(event, Welcome):
        raise RemoteProtocolError(f"expected welcome, got {event!r}"[:200])
    if user and event.user != user:
        raise NotAuthorized(f"the server did not switch to the account {user!r} "
                            f"(it does not support user accounts)")
    return event
