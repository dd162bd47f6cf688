"""The two TLS contexts: the server requires a client certificate it has authorized or that a
CA it trusts signed; the client pins the server's certificate by fingerprint after the handshake
(see ``tether.identity``), or, for a host matching a ``@cert-authority`` line of its known_hosts,
verifies the server's host certificate against that CA (see ``tether.hosttrust``).

Certificate times are not checked by OpenSSL (``NO_CHECK_TIME``): the server checks a client's
validity after the handshake and the client a host certificate's, so that a refusal names the
time instead of ending in a bare TLS alert.

A server with a host certificate presents it only to a client that asks for it by the SNI name
:data:`HOST_CERT_SNI` (a client checking host certificates); every other client still sees the
self-signed certificate it pinned.

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
    from collections.abc import Iterable, Sequence

    from tether.identity import Identity


HOST_CERT_SNI = "host-certificate.tether.invalid"
NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME (OpenSSL >= 1.1.0), not exposed by ssl


def _no_time_checks(ctx: ssl.SSLContext) -> None:
    ctx.verify_flags = ssl.VerifyFlags(ctx.verify_flags | NO_CHECK_TIME)


def server_context(identity: Identity, authorized: Iterable[bytes],
                   host_cert: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """``authorized``: the DER certificates trusted as anchors (authorized clients, CAs)."""
    anchors = list(authorized)
    ctx = _server_context(identity.cert_path, identity.key_path, anchors)
    if host_cert is not None:
        host_ctx = _server_context(host_cert, identity.key_path, anchors)

        def choose(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            if name == HOST_CERT_SNI:
                sslobj.context = host_ctx

        ctx.sni_callback = choose
    return ctx


def _server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                    anchors: list[bytes]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _no_time_checks(ctx)
    if anchors:
        ctx.load_verify_locations(cadata=b"".join(anchors))
    # No session tickets at all, so every connection authenticates in full: in TLS 1.3,
    # OP_NO_TICKET alone only makes OpenSSL issue stateful tickets a client could resume with.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def client_context(identity: Identity) -> ssl.SSLContext:
    return client_context_files(identity.cert_path, identity.key_path)


def client_context_files(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                         cas: bytes = b"", crls: Sequence[str] = ()) -> ssl.SSLContext:
    """``cas`` (DER certificates): verify the server's host certificate against these CAs (and
    the revocation lists in the PEM files ``crls``); otherwise the server is pinned by
    fingerprint (known_hosts) after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # names are checked after the handshake (tether.hosttrust)
    if cas:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _no_time_checks(ctx)
        ctx.load_verify_locations(cadata=cas)
        for crl in crls:
            ctx.load_verify_locations(cafile=crl)
        if crls:
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    else:
        ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    return ctx
