"""Identities, the SSH way: keys with self-signed certificates, fingerprints, known hosts, and
the authorized-clients list. Pure files and crypto, no sockets.

A fingerprint is ``SHA256:`` and the unpadded base64 of the SHA-256 of the certificate's DER, so
that the client computes it with the standard library alone (the one-shot CLI never imports
``cryptography``; only ``keygen`` and a first ``serve`` do).
"""

from __future__ import annotations

import base64
import os
import shlex
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tether.defaults import DEFAULT_PORT
from tether.errors import IdentityError
from tether.home import (
    add_known_host,
    check_host,
    fingerprint,
    home_path,
    host_key,
    identity_files,
    known_hosts_file,
    lookup_known_host,
    require_identity,
)

ID_PREFIX = "tether-cert"
PERMISSIONS = ("exec", "shell", "put", "get")


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$TETHER_HOME``, else ``~/.config/tether``."""
    return Path(home_path(home))


@dataclass(frozen=True)
class Identity:
    """A key pair on disk with its self-signed certificate."""

    key_path: Path
    cert_path: Path
    cert_der: bytes
    name: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_der)

    @property
    def id_line(self) -> str:
        """The one-line public identity to hand to a server admin (like an ssh public key)."""
        return f"{ID_PREFIX} {base64.b64encode(self.cert_der).decode()} {self.name}"


def _paths(home: Path, kind: str) -> tuple[Path, Path]:
    key, cert = identity_files(home, kind)
    return Path(key), Path(cert)


def load_identity(home: Path, kind: str = "client") -> Identity:
    """Read an identity; raises IdentityError naming the missing file and the fix."""
    key_path, cert_path = (Path(p) for p in require_identity(home, kind))
    try:
        pem = cert_path.read_text()
        der = ssl.PEM_cert_to_DER_cert(pem)
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read certificate {cert_path}: {exc}") from exc
    name_file = home / f"{Path(identity_files(home, kind)[1]).stem}.name"
    name = name_file.read_text().strip() if name_file.exists() else "tether"
    return Identity(key_path, cert_path, der, name)


MAX_NAME = 64  # an X.509 common name's limit


def check_identity_name(name: str) -> str:
    """An identity's name goes into its certificate (a common name of at most 64 characters)
    and into its id line as one word: printable, no white space."""
    if not 0 < len(name) <= MAX_NAME or not name.isprintable() or any(c.isspace() for c in name):
        raise IdentityError(f"the name {name[:80]!r} is not allowed: 1 to {MAX_NAME} printable "
                            f"characters without spaces")
    return name


def generate_identity(home: Path, name: str, kind: str = "client") -> Identity:
    """Create an Ed25519 key (mode 0600) and a self-signed certificate under ``home``."""
    check_identity_name(name or "tether")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key_path, cert_path = _paths(home, kind)
    if key_path.exists():
        raise IdentityError(f"{key_path} already exists; remove it first to make a new identity")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    # A unique subject (and key identifiers below): OpenSSL looks up a self-signed
    # certificate's issuer by subject, so two identities sharing a name must not share one.
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, name or "tether"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, os.urandom(8).hex()),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * 100))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (home / f"{cert_path.stem}.name").write_text((name or "tether") + "\n")
    return load_identity(home, kind)


# --- authorized clients -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizedClient:
    cert_der: bytes
    name: str
    root: str | None = None
    permissions: frozenset[str] = field(default_factory=lambda: frozenset(PERMISSIONS))
    users: tuple[str, ...] = ()  # Unix accounts it may use (the first: default); (): the server's

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_der)


def short_fingerprint(fp: str) -> str:
    """Enough of a fingerprint to tell two identities of the same name apart in a log line."""
    return fp[: len("SHA256:") + 8]


def check_certificate(der: bytes) -> None:
    """Raise IdentityError unless ``der`` is a whole X.509 certificate whose Ed25519 key signed
    it: what ``tether keygen`` makes. A damaged entry in ``authorized`` would otherwise reach
    the TLS trust store, where one bad certificate locks every client out."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError("the certificate is damaged (cut short or not a certificate)") from exc
    if not isinstance(cert.public_key(), Ed25519PublicKey):
        raise IdentityError("the certificate's key is not Ed25519 (not made by tether keygen)")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError("the certificate is not signed by its own key") from exc


def parse_id_line(line: str) -> tuple[bytes, str]:
    """The certificate and name in an id line; raises IdentityError if it is not one."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != ID_PREFIX:
        raise IdentityError(f"not a tether identity line (expected '{ID_PREFIX} BASE64 NAME')")
    try:
        der = base64.b64decode(parts[1], validate=True)
        ssl.DER_cert_to_PEM_cert(der)
    except ValueError as exc:
        raise IdentityError("identity line has a damaged certificate") from exc
    return der, parts[2] if len(parts) > 2 else "client"


def parse_permissions(text: str) -> frozenset[str]:
    perms = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = perms - set(PERMISSIONS)
    if unknown:
        raise IdentityError(
            f"unknown permission {sorted(unknown)[0]!r} (choose from {', '.join(PERMISSIONS)})"
        )
    return perms


def authorized_path(home: Path) -> Path:
    return home / "authorized"


def format_authorized(client: AuthorizedClient) -> str:
    words = [ID_PREFIX, base64.b64encode(client.cert_der).decode(), client.name]
    if client.root is not None:
        words.append(f"root={client.root}")
    if client.permissions != frozenset(PERMISSIONS):
        words.append("allow=" + ",".join(p for p in PERMISSIONS if p in client.permissions))
    if client.users:
        words.append("user=" + ",".join(client.users))
    return shlex.join(words)


def parse_authorized_line(line: str) -> AuthorizedClient:
    words = shlex.split(line)
    der, name = parse_id_line(" ".join(words[:3]))
    root, perms = None, frozenset(PERMISSIONS)
    users: tuple[str, ...] = ()
    for word in words[3:]:
        key, _, value = word.partition("=")
        if key == "root":
            root = value
        elif key == "allow":
            perms = parse_permissions(value)
        elif key == "user":
            users = tuple(u for u in value.split(",") if u)
        else:
            raise IdentityError(f"unknown option {key!r}")
    return AuthorizedClient(der, name, root, perms, users)


@dataclass(frozen=True)
class AuthorizedFile:
    """What the server admits: every valid entry, and a message per line it had to skip."""

    clients: dict[str, AuthorizedClient]
    problems: list[str]


def read_authorized(home: Path) -> AuthorizedFile:
    """Every valid entry of ``authorized`` (its certificate checked), and each damaged line
    named with its number. The server admits exactly the valid entries: a typo made while
    removing a client must not keep that client (or lock out everyone else)."""
    path = authorized_path(home)
    clients: dict[str, AuthorizedClient] = {}
    problems: list[str] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AuthorizedFile(clients, problems)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return AuthorizedFile(clients, [f"{path}: cannot read it: {reason}"])
    for number, line in enumerate(text.splitlines(), 1):
        if not _is_entry(line):
            continue
        try:
            client = parse_authorized_line(line)
            check_certificate(client.cert_der)
        except (IdentityError, ValueError) as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        clients[client.fingerprint] = client
    return AuthorizedFile(clients, problems)


def load_authorized(home: Path) -> dict[str, AuthorizedClient]:
    """Authorized clients by fingerprint; a damaged line is an error naming its line number
    (for commands that rewrite the file: they must not build on a damaged one)."""
    found = read_authorized(home)
    if found.problems:
        raise IdentityError(found.problems[0])
    return found.clients


def _is_entry(line: str) -> bool:
    """Whether a line of the authorized file grants a client (not a comment or blank line)."""
    return bool(line.strip()) and not line.lstrip().startswith("#")


def add_authorized(home: Path, client: AuthorizedClient) -> bool:
    """Append a client, or replace its entry in place (by fingerprint); False if it was already
    there unchanged. Every other line is kept as written: an admin's comments and blank lines
    survive ``tether authorize``."""
    path = authorized_path(home)
    if load_authorized(home).get(client.fingerprint) == client:  # also validates every line
        return False
    lines = path.read_text().splitlines() if path.exists() else []
    entry = format_authorized(client)
    kept: list[str] = []
    placed = False
    for line in lines:
        if not _is_entry(line) or parse_authorized_line(line).fingerprint != client.fingerprint:
            kept.append(line)
        elif not placed:  # its first entry is replaced in place, later duplicates dropped
            kept.append(entry)
            placed = True
    if not placed:
        kept.append(entry)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return True


def revoke_authorized(home: Path, who: str) -> list[AuthorizedClient]:
    """Remove the entries of the client named ``who``, or with that fingerprint (or a unique
    prefix of it, at least the short form); comments and other lines are kept. A name shared
    by several identities is refused: the admin must say which fingerprint."""
    path = authorized_path(home)
    clients = list(load_authorized(home).values())
    if who.startswith("SHA256:"):
        if len(who) < len(short_fingerprint(who)):
            raise IdentityError(f"{who!r} is too short: give at least {len('SHA256:') + 8} "
                                f"characters of the fingerprint")
        chosen = [c for c in clients if c.fingerprint.startswith(who)]
    else:
        chosen = [c for c in clients if c.name == who]
    if not chosen:
        raise IdentityError(f"no authorized client {who!r} in {path}")
    if len(chosen) > 1:
        shown = ", ".join(short_fingerprint(c.fingerprint) for c in chosen)
        raise IdentityError(f"{len(chosen)} clients match {who!r} ({shown}): revoke one by its "
                            f"fingerprint")
    gone = {c.fingerprint for c in chosen}
    kept = [line for line in path.read_text().splitlines()
            if not _is_entry(line) or parse_authorized_line(line).fingerprint not in gone]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return chosen


# --- known hosts (the light functions live in tether.home) --------------------------------------


def known_hosts_path(home: Path) -> Path:
    return Path(known_hosts_file(home))


def forget_known_host(home: Path, host: str, port: int | None = None) -> list[str]:
    """Remove the pins of ``host`` (at ``port``, or at every port), as ``ssh-keygen -R`` does;
    the removed lines are returned. Comments and every other line are kept; the file is
    replaced atomically, so a crash leaves the old file or the new one."""
    path = known_hosts_path(home)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    keys = {host_key(host, port)} if port is not None else None

    def pins_host(line: str) -> bool:
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if keys is not None:
            return first in keys
        return first == host or (first.startswith(f"[{host}]:") and first.count("]:") == 1)

    removed = [line for line in lines if pins_host(line)]
    if removed:
        tmp = path.with_name(f".known_hosts.{os.getpid()}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines if not pins_host(line)))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return removed


__all__ = [
    "DEFAULT_PORT",
    "AuthorizedClient",
    "AuthorizedFile",
    "Identity",
    "add_authorized",
    "add_known_host",
    "authorized_path",
    "check_certificate",
    "check_host",
    "check_identity_name",
    "fingerprint",
    "forget_known_host",
    "generate_identity",
    "home_dir",
    "host_key",
    "known_hosts_path",
    "load_authorized",
    "load_identity",
    "lookup_known_host",
    "parse_id_line",
    "parse_permissions",
    "read_authorized",
    "revoke_authorized",
    "short_fingerprint",
]
