"""Admission of a client by certificate: the CAs a server trusts (``serve --trust-ca``), the
revocation list (``--crl``) and the principals file (``$TETHER_HOME/principals``), beside the
authorized list; and the Unix account a session is mapped to.

TLS has checked only that the client holds the key of a certificate that chains to an anchor
(an authorized certificate or a trusted CA; times are not checked there). Everything else is
decided here, after the handshake, so that every refusal is one line naming why, sent to the
client and written to the audit log: validity (naming the time), a CA certificate presented as
a client, revocation, principals and their mapping, the account asked for.

The revocation list and the principals file are read again when their content changes, for the
next connection; a damaged new version is logged and the previous one kept.

Principals file, one line per principal (``#`` comments), like sshd's AuthorizedPrincipalsFile::

    PRINCIPAL [user=NAME[,NAME...]] [root=DIR] [allow=exec,shell,put,get]

``user``: the accounts the principal may use (the first is the default); none: the server's own.
``root``: confine the session there (default: the account's home). ``allow``: permissions.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import pwd
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from tether.ca import CertInfo, cert_info, check_principal, issued_by, load_ca_cert, load_crls
from tether.errors import IdentityError, NotAuthorized, TetherError
from tether.identity import PERMISSIONS, AuthorizedClient, fingerprint, parse_permissions

log = logging.getLogger("tether.server")


@dataclass(frozen=True)
class Mapping:
    """One principals-file line."""

    principal: str
    users: tuple[str, ...] = ()
    root: str | None = None
    permissions: frozenset[str] = frozenset(PERMISSIONS)


@dataclass(frozen=True)
class Grant:
    """Who a client is and what this session may do, as admission decided it."""

    fingerprint: str
    name: str
    root: Path | None  # None: the account's home, or the server's root
    permissions: frozenset[str]
    confined: bool
    user: str | None = None  # a Unix account other than the server's own, to switch to
    serial: str | None = None  # a CA-signed certificate's serial (hex)
    principals: tuple[str, ...] = field(default_factory=tuple)


def parse_principals(text: str, source: str = "principals") -> dict[str, Mapping]:
    out: dict[str, Mapping] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
            users: tuple[str, ...] = ()
            root, perms = None, frozenset(PERMISSIONS)
            for word in words[1:]:
                key, eq, value = word.partition("=")
                if not eq:
                    raise IdentityError(f"expected KEY=VALUE, got {word!r}")
                if key == "user":
                    users = tuple(u for u in value.split(",") if u)
                elif key == "root":
                    root = value
                elif key == "allow":
                    perms = parse_permissions(value)
                else:
                    raise IdentityError(f"unknown option {key!r} (user, root, allow)")
            out[check_principal(words[0])] = Mapping(words[0], users, root, perms)
        except (IdentityError, ValueError) as exc:
            raise IdentityError(f"{source}:{number}: {exc}") from exc
    return out


class _ByContent:
    """A file re-read when its content changes (checked on every call, it is small)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.digest: bytes | None = None

    def changed(self) -> bytes | None:
        """The new content when it changed since last time, else None (b"" if missing)."""
        if self.path is None:
            return None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        digest = hashlib.sha256(data).digest()
        if digest == self.digest:
            return None
        self.digest = digest
        return data


class Trust:
    """The server's trusted CAs, revocation list and principals, and the admission rules."""

    def __init__(self, home: Path, ca_files: Sequence[Path] = (), crl: Path | None = None
                 ) -> None:
        self.cas = [load_ca_cert(path) for path in ca_files]
        self._crl = _ByContent(crl)
        self._principals = _ByContent(home / "principals")
        self.revoked: dict[bytes, set[int]] = {}  # CA subject (DER) -> revoked serials
        self.mappings: dict[str, Mapping] = {}
        if crl is not None:  # at start a bad list is an error, not a warning: nothing to keep
            try:
                self.revoked = self._parse_crl(self._crl.changed() or b"")
            except (ValueError, TetherError, OSError) as exc:
                raise IdentityError(f"--crl {crl}: {exc}") from exc
        self.refresh()

    @property
    def anchors(self) -> list[bytes]:
        from tether.ca import der

        return [der(ca) for ca in self.cas]

    def refresh(self) -> None:
        """Re-read the revocation list and principals file if their content changed."""
        data = self._crl.changed()
        if data is not None:
            try:
                self.revoked = self._parse_crl(data)
                log.info("revocation list loaded: %d revoked", sum(map(len,
                                                                     self.revoked.values())))
            except (ValueError, TetherError) as exc:
                log.error("keeping the previous revocation list: %s: %s", self._crl.path, exc)
        text = self._principals.changed()
        if text is not None:
            try:
                self.mappings = parse_principals(text.decode("utf-8", "replace"),
                                                 str(self._principals.path))
            except IdentityError as exc:
                log.error("keeping the previous principals: %s", exc)

    def _parse_crl(self, data: bytes) -> dict[bytes, set[int]]:
        """Revoked serials by CA; a missing or empty file is an error (never an empty list: a
        deleted file must not lift revocations)."""
        out: dict[bytes, set[int]] = {}
        if not data.strip():
            raise ValueError("missing or empty")
        for crl in load_crls(data):
            ca = next((c for c in self.cas if c.subject == crl.issuer), None)
            if ca is None or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                issuer = crl.issuer.rfc4514_string()
                raise ValueError(f"a list not signed by a trusted CA ({issuer})")
            out.setdefault(crl.issuer.public_bytes(), set()).update(
                r.serial_number for r in crl)
        return out

    # --- admission -----------------------------------------------------------------------------

    def admit(self, cert_der: bytes, authorized: dict[str, AuthorizedClient], user: str,
              now: datetime.datetime | None = None) -> Grant:
        """The grant for a client presenting ``cert_der`` and asking for account ``user``
        ("" for the default), or NotAuthorized with the one-line reason."""
        self.refresh()
        now = now or datetime.datetime.now(datetime.UTC)
        fp = fingerprint(cert_der)
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError as exc:
            raise NotAuthorized(f"unreadable client certificate: {exc}") from exc
        info = cert_info(cert)
        if info.is_ca:
            raise NotAuthorized("a CA certificate cannot be a client identity")
        problem = info.validity_problem(now)
        if problem:
            raise NotAuthorized(problem)
        client = authorized.get(fp)
        if client is not None:
            return self._authorized_grant(fp, client, user, info)
        return self._ca_grant(fp, cert, info, user)

    def _authorized_grant(self, fp: str, client: AuthorizedClient, user: str,
                          info: CertInfo) -> Grant:
        users = client.users
        account = _choose_account(user, users, f"client {client.name}")
        root = Path(client.root) if client.root else None
        return Grant(fp, client.name, root, client.permissions, client.root is not None,
                     account, None if info.self_signed else f"{info.serial:x}",
                     info.principals)

    def _ca_grant(self, fp: str, cert: x509.Certificate, info: CertInfo, user: str) -> Grant:
        ca = next((c for c in self.cas if issued_by(cert, c)), None)
        if ca is None:
            raise NotAuthorized(f"client identity {fp} is not authorized "
                                f"(and not signed by a CA this server trusts)")
        ca_problem = cert_info(ca).validity_problem(datetime.datetime.now(datetime.UTC))
        if ca_problem:
            raise NotAuthorized(f"the CA that signed this certificate: {ca_problem}")
        serial = f"{info.serial:x}"
        if info.serial in self.revoked.get(ca.subject.public_bytes(), set()):
            raise NotAuthorized(f"certificate serial {serial} is revoked")
        if not info.principals:
            raise NotAuthorized(f"certificate serial {serial} has no principals")
        mapped = [self.mappings[p] for p in info.principals if p in self.mappings]
        if not mapped:
            raise NotAuthorized(f"no principal of this certificate "
                                f"({', '.join(info.principals)}) is mapped on this server")
        if user:
            chosen = next((m for m in mapped if user in _users_of(m)), None)
            if chosen is None:
                raise NotAuthorized(
                    f"principal {', '.join(m.principal for m in mapped)} may not use the "
                    f"account {user!r}")
        else:
            chosen = mapped[0]
        account = _choose_account(user, chosen.users, f"principal {chosen.principal}")
        perms = chosen.permissions & (info.allow if info.allow is not None
                                      else frozenset(PERMISSIONS))
        root = Path(chosen.root) if chosen.root else None
        return Grant(fp, info.name, root, perms, chosen.root is not None, account,
                     serial, info.principals)


def _users_of(mapping: Mapping) -> tuple[str, ...]:
    return mapping.users or (own_account(),)


def own_account() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _choose_account(asked: str, allowed: tuple[str, ...], who: str) -> str | None:
    """The account to switch to (None: stay the server's own), or NotAuthorized."""
    own = own_account()
    if asked:
        if asked not in (allowed or (own,)):
            raise NotAuthorized(f"{who} may not use the account {asked!r}")
        account = asked
    else:
        account = allowed[0] if allowed else own
    if account == own:
        return None
    try:
        pwd.getpwnam(account)
    except KeyError:
        raise NotAuthorized(f"no account {account!r} on this server") from None
    if os.geteuid() != 0:
        raise NotAuthorized(f"this server runs as {own} and cannot act as {account!r} "
                            f"(mapping clients to accounts needs tether serve run as root)")
    return account
