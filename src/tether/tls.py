"""The two TLS contexts: the server requires a client certificate it has authorized; the client
pins the server's certificate by fingerprint after the handshake (see ``tether.identity``).

TLS 1.3 only. The server trusts exactly the authorized clients' self-signed certificates as
anchors, so an unknown client fails the handshake before a single frame is read. In TLS 1.3 the
client learns of that only on its first read, which is why the protocol confirms authentication
with an explicit ``welcome``.
"""

from __future__ import annotations

import os
import ssl

TYPE_CHECKING = False  # the one-shot CLI imports this module: no typing, no tether.identity
if TYPE_CHECKING:
    from collections.abc import Iterable

    from tether.identity import Identity


def server_context(identity: Identity, authorized: Iterable[bytes]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    anchors = b"".join(authorized)
    if anchors:
        ctx.load_verify_locations(cadata=anchors)
    # No session tickets at all, so every connection authenticates in full: in TLS 1.3,
    # OP_NO_TICKET alone only makes OpenSSL issue stateful tickets a client could resume with.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def client_context(identity: Identity) -> ssl.SSLContext:
    return client_context_files(identity.cert_path, identity.key_path)


def client_context_files(cert: str | os.PathLike[str], key: str | os.PathLike[str]
                         ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server is pinned by fingerprint (known_hosts) instead
    ctx.load_cert_chain(cert, key)
    return ctx
