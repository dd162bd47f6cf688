"""The client's side of the handshake, shared by the asyncio API and the blocking one-shot
client (so it imports neither asyncio nor anything heavy): the hello it sends, and what the
server's answer means."""

from __future__ import annotations

import base64
import os

from tether.errors import NotAuthorized, RemoteProtocolError, from_wire
from tether.home import add_known_host, fingerprint, known_fingerprints
from tether.protocol.connection import PROTOCOL_VERSIONS
from tether.protocol.messages import NEXT_KEY_CONTEXT, Data, Error, Hello, Message, Welcome
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


def learn_next_key(home: str | os.PathLike[str], host: str, port: int, server_cert: bytes,
                   welcome: Welcome) -> bool:
    """During a server key rotation, pin the announced next key beside the current one, if the
    current key signed it and it is validly self-signed (docs/PROTOCOL.md, "Key rotation").
    True if a new fingerprint was pinned. Only then is ``cryptography`` imported: a one-shot
    ``tether run`` to a server that is not rotating pays nothing."""
    if not welcome.next_cert or not server_cert:
        return False
    try:
        new_der = base64.b64decode(welcome.next_cert, validate=True)
        proof = base64.b64decode(welcome.next_proof, validate=True)
    except ValueError:
        return False
    new_fp = fingerprint(new_der)
    if new_fp in known_fingerprints(home, host, port):
        return False
    if not _endorsed(server_cert, new_der, proof):
        return False
    add_known_host(home, host, port, new_fp, rotated_from=fingerprint(server_cert))
    return True


def _endorsed(old_der: bytes, new_der: bytes, proof: bytes) -> bool:
    """Whether the old certificate's key signed the new certificate, and the new one is signed
    by its own key (its holder has the private key)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        old = x509.load_der_x509_certificate(old_der)
        new = x509.load_der_x509_certificate(new_der)
        old_key = old.public_key()
        if not isinstance(old_key, ed25519.Ed25519PublicKey):
            return False
        old_key.verify(proof, NEXT_KEY_CONTEXT + new_der)
        new.verify_directly_issued_by(new)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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
