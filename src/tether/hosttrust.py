"""The client's trust in host certificates: ``@cert-authority`` lines of known_hosts, the host
revocation lists beside them, and the checks of a host certificate's name and validity.

Light on purpose (``os``, ``ssl``, ``base64``; ``fnmatch`` and ``ipaddress`` only for a host a
``@cert-authority`` line may cover), like :mod:`tether.home`, because a one-shot ``tether run``
reads it: OpenSSL verifies the signature (and the revocation list) during
the handshake, and the name and times are read from ``getpeercert()`` afterwards, so that each
refusal says why.

A line ``@cert-authority PATTERNS BASE64-DER NAME`` trusts host certificates signed by that CA
for a host whose name matches one of the comma-separated ``fnmatch`` PATTERNS. A host with its
own pinned line keeps its pin. ``host_crls/HEX.pem`` (HEX: the SHA-256 of the CA certificate's
DER) is that CA's revocation list; when every CA trusted for a host has one, revoked host
certificates are refused.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import time

from tether.errors import HostCertificateRefused
from tether.home import host_key, known_hosts_file, lookup_known_host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

CA_MARKER = "@cert-authority"


def ca_lines(home: str | os.PathLike[str]) -> list[tuple[str, bytes, str]]:
    """Every ``@cert-authority`` line: (patterns, CA certificate DER, name)."""
    try:
        with open(known_hosts_file(home)) as fh:
            text = fh.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == CA_MARKER:
            try:
                der = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue
            out.append((parts[1], der, " ".join(parts[3:])))
    return out


def matches(patterns: str, host: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(host.lower(), p.lower()) for p in patterns.split(",") if p)


def crl_file(home: str | os.PathLike[str], ca_der: bytes) -> str:
    return os.path.join(home, "host_crls", hashlib.sha256(ca_der).hexdigest() + ".pem")


def cas_for(home: str | os.PathLike[str], host: str, port: int) -> tuple[bytes, list[str]]:
    """The CA certificates (DER, concatenated) trusted for ``host``'s host certificate and their
    revocation lists (empty unless every one of them has a list); nothing when the host has its
    own pinned fingerprint."""
    if lookup_known_host(home, host, port) is not None:
        return b"", []
    cas = [der for patterns, der, _ in ca_lines(home) if matches(patterns, host)]
    crls = [crl_file(home, der) for der in cas]
    if not all(os.path.exists(path) for path in crls):
        crls = []
    return b"".join(cas), crls


def client_context(home: str | os.PathLike[str], host: str, port: int,
                   cert: str | os.PathLike[str], key: str | os.PathLike[str]
                   ) -> tuple[ssl.SSLContext, bool]:
    """The client's TLS context for ``host``, and whether it checks a host certificate (then
    the connection asks for one with the SNI name ``tls.HOST_CERT_SNI``)."""
    from tether.tls import client_context_files

    cas, crls = cas_for(home, host, port)
    return client_context_files(cert, key, cas, crls), bool(cas)


def _peer_time(text: str) -> float:
    return float(ssl.cert_time_to_seconds(text))


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _cert_names(peer: Mapping[str, object]) -> list[str]:
    names = []
    for kind, value in peer.get("subjectAltName", ()):  # type: ignore[attr-defined]
        if kind in ("DNS", "IP Address"):
            names.append(str(value).strip().lower())
    return names


def _name_matches(cert_name: str, host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(cert_name) == ipaddress.ip_address(host)
    except ValueError:
        pass
    if cert_name.startswith("*."):  # one leftmost label, as in TLS
        head, _, rest = host.partition(".")
        return bool(head) and rest == cert_name[2:]
    return cert_name == host


def check_host_certificate(host: str, port: int, peer: Mapping[str, object],
                           now: float | None = None) -> None:
    """Refuse a (CA-verified) host certificate for another name or outside its validity."""
    key = host_key(host, port)
    now = time.time() if now is None else now
    names = _cert_names(peer)
    if not any(_name_matches(name, host.lower()) for name in names):
        raise HostCertificateRefused(
            f"the host certificate of {key} is for {', '.join(names) or 'no name'}, "
            f"not {host}")
    not_before = _peer_time(str(peer["notBefore"]))
    not_after = _peer_time(str(peer["notAfter"]))
    if now < not_before:
        raise HostCertificateRefused(
            f"the host certificate of {key} is not valid before {_when(not_before)}")
    if now > not_after:
        raise HostCertificateRefused(
            f"the host certificate of {key} expired at {_when(not_after)}")


def refused_in_handshake(host: str, port: int, exc: ssl.SSLCertVerificationError
                         ) -> HostCertificateRefused:
    """The error for a host certificate OpenSSL refused (unknown CA, revoked, bad purpose)."""
    reason = exc.verify_message or exc.reason or "verification failed"
    if exc.verify_code in (18, 19, 20, 21):  # self-signed, or no trusted issuer
        reason = ("it presented no host certificate from a CA trusted for it "
                  f"({reason}); known_hosts has no pinned line for it")
    elif exc.verify_code == 23:
        reason = "its host certificate is revoked"
    return HostCertificateRefused(f"the server {host_key(host, port)} was refused: {reason}")


def expiry_file(home: str | os.PathLike[str]) -> str:
    return os.path.join(home, "id_signed_cert.expires")


def expiry_warning(home: str | os.PathLike[str], now: float | None = None) -> str | None:
    """A warning when this client's installed certificate expires within a day (or has)."""
    try:
        with open(expiry_file(home)) as fh:
            not_after = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    if not_after - now > 86400:
        return None
    if not_after <= now:
        return f"tether: warning: your certificate expired at {_when(not_after)}"
    hours = (not_after - now) / 3600
    return (f"tether: warning: your certificate expires in {hours:.1f} h "
            f"(at {_when(not_after)}); ask the CA for a new one")
