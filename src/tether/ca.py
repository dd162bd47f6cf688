"""A certificate authority for a fleet: the CA directory, user and host certificates, revocation
lists, and reading what a certificate says (principals, permissions, names, validity).

Files and crypto only (the ``cryptography`` package), no sockets. A CA directory holds
``ca_key.pem`` (mode 0600, optionally encrypted), ``ca_cert.pem`` (``CA:true``, path length 0),
``issued`` (one line per certificate signed: serial, fingerprint, kind, not-after, names — so a
certificate can be revoked by fingerprint), ``revoked`` (serial and time) and ``crl.pem``.

Principals and a user certificate's permissions travel in two non-critical extensions under
OIDs of the UUID arc (2.25, X.667), each a DER ``SEQUENCE OF UTF8String``: OpenSSL ignores them,
tether's server reads them. A host certificate names its host names and addresses in the
standard subjectAltName.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.errors import IdentityError
from tether.home import fingerprint
from tether.identity import PERMISSIONS

PRINCIPALS_OID = x509.ObjectIdentifier("2.25.190861419548960618702779396917063391801")
ALLOW_OID = x509.ObjectIdentifier("2.25.190861419548960618702779396917063391802")
PRINCIPAL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SKEW = datetime.timedelta(minutes=5)  # not-before is backdated this much, for clock skew


def parse_duration(text: str) -> datetime.timedelta:
    """``90m``, ``8h``, ``30d``, ``2w`` or plain seconds, as a positive timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise IdentityError(f"not a duration: {text!r} (examples: 90m, 8h, 30d, 2w)")
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


def check_principal(name: str) -> str:
    if not PRINCIPAL_RE.fullmatch(name):
        raise IdentityError(f"not a principal name: {name!r} (letters, digits, _ . @ + -)")
    return name


# --- a tiny DER codec for SEQUENCE OF UTF8String ------------------------------------------------


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def encode_strings(items: Sequence[str]) -> bytes:
    return _tlv(0x30, b"".join(_tlv(0x0C, s.encode()) for s in items))


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, body, next position); ValueError on anything malformed."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, data[pos:pos + length], pos + length


def decode_strings(data: bytes) -> list[str]:
    tag, body, end = _read_tlv(data, 0)
    if tag != 0x30 or end != len(data):
        raise ValueError("not a SEQUENCE")
    items, pos = [], 0
    while pos < len(body):
        tag, item, pos = _read_tlv(body, pos)
        if tag != 0x0C:
            raise ValueError("not a UTF8String")
        items.append(item.decode())
    return items


# --- reading certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    """What a certificate says, for admission, ``tether id`` and the audit log."""

    serial: int
    name: str  # the subject's common name
    subject: str
    issuer: str
    self_signed: bool
    is_ca: bool
    not_before: datetime.datetime
    not_after: datetime.datetime
    principals: tuple[str, ...]
    allow: frozenset[str] | None  # None: the certificate does not narrow permissions
    names: tuple[str, ...]  # a host certificate's DNS names and addresses

    def validity_problem(self, now: datetime.datetime) -> str | None:
        """Why the certificate is not valid at ``now`` (naming the time), or None."""
        if now < self.not_before:
            return f"certificate not valid before {stamp(self.not_before)}"
        if now > self.not_after:
            return f"certificate expired at {stamp(self.not_after)}"
        return None


def certificate_summary(cert_der: bytes, now: datetime.datetime | None = None) -> str | None:
    """What ``tether id`` says of a CA-signed certificate (None for a self-signed one)."""
    info = cert_info(load_der(cert_der))
    if info.self_signed:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    what = (f"principals: {', '.join(info.principals) or '(none)'}" if not info.names
            else f"names: {', '.join(info.names)}")
    left = info.not_after - now
    state = (f"expired at {stamp(info.not_after)}" if left.total_seconds() <= 0
             else f"valid until {stamp(info.not_after)} ({_left(left)} left)")
    allow = f"; allow: {','.join(sorted(info.allow))}" if info.allow is not None else ""
    return f"certificate: serial {info.serial:x}; {what}{allow}; {state}; issuer: {info.issuer}"


def _left(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{max(seconds // 60, 0)} min"


def stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def load_der(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"damaged certificate: {exc}") from exc


def cert_info(cert: x509.Certificate) -> CertInfo:
    ext = cert.extensions

    def get(oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType] | None:
        try:
            return ext.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            return None

    basic = get(x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    is_ca = bool(basic and isinstance(basic.value, x509.BasicConstraints) and basic.value.ca)
    principals = _strings(get(PRINCIPALS_OID))
    allow_ext = get(ALLOW_OID)
    allow = frozenset(_strings(allow_ext)) & frozenset(PERMISSIONS) if allow_ext else None
    names: list[str] = []
    san = get(x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is not None and isinstance(san.value, x509.SubjectAlternativeName):
        names += san.value.get_values_for_type(x509.DNSName)
        names += [str(a) for a in san.value.get_values_for_type(x509.IPAddress)]
    return CertInfo(
        serial=cert.serial_number, name=_common_name(cert.subject),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(), self_signed=cert.issuer == cert.subject,
        is_ca=is_ca, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        principals=tuple(principals), allow=allow, names=tuple(names),
    )


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _strings(extension: x509.Extension[x509.ExtensionType] | None) -> list[str]:
    if extension is None or not isinstance(extension.value, x509.UnrecognizedExtension):
        return []
    try:
        return decode_strings(extension.value.value)
    except (ValueError, UnicodeDecodeError):
        return []


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (names and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- the CA directory ---------------------------------------------------------------------------


def ca_files(directory: Path) -> tuple[Path, Path]:
    return directory / "ca_key.pem", directory / "ca_cert.pem"


def init_ca(directory: Path, name: str, passphrase: bytes | None = None) -> x509.Certificate:
    """A new CA key (0600) and self-signed CA certificate in ``directory``."""
    key_path, cert_path = ca_files(directory)
    if key_path.exists() or cert_path.exists():
        raise IdentityError(f"{directory} already holds a CA; remove it first to make a new one")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, os.urandom(8).hex())])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, None)
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            encryption)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def key_is_encrypted(directory: Path) -> bool:
    try:
        return b"ENCRYPTED" in ca_files(directory)[0].read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"no CA in {directory} (run: tether ca init {directory})") from None


def load_ca(directory: Path, passphrase: bytes | None = None
            ) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    key_path, cert_path = ca_files(directory)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), passphrase)
    except FileNotFoundError as exc:
        raise IdentityError(f"no CA in {directory} (run: tether ca init {directory})") from exc
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"cannot open the CA key in {directory}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{key_path}: not an Ed25519 key")
    return key, cert


def load_ca_cert(path: Path) -> x509.Certificate:
    """A CA certificate file (PEM, or a CA directory); refuses one that is not a CA."""
    if path.is_dir():
        path = ca_files(path)[1]
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read CA certificate {path}: {exc}") from exc
    if not cert_info(cert).is_ca:
        raise IdentityError(f"{path} is not a CA certificate (CA:true)")
    return cert


def _subject_of(der: bytes) -> tuple[x509.Certificate, x509.Name]:
    """The certificate an identity line holds, checked to be a self-signed end identity."""
    cert = load_der(der)
    info = cert_info(cert)
    if info.is_ca:
        raise IdentityError("that line holds a CA certificate, not an identity")
    return cert, cert.subject


def sign(directory: Path, der: bytes, kind: str, names: Sequence[str],
         valid: datetime.timedelta, allow: frozenset[str] | None = None,
         passphrase: bytes | None = None, start: datetime.datetime | None = None
         ) -> x509.Certificate:
    """A user (``kind="user"``, principals ``names``) or host certificate (host ``names``) for
    the public key of the certificate ``der``, signed by the CA in ``directory``, valid from
    ``start`` (default: now, less a few minutes for clock skew) for ``valid``."""
    if not names:
        raise IdentityError("at least one " + ("--principal" if kind == "user" else "--name"))
    key, ca = load_ca(directory, passphrase)
    subject_cert, subject = _subject_of(der)
    now = start or datetime.datetime.now(datetime.UTC)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
        .public_key(subject_cert.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW if start is None else now).not_valid_after(now + valid)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
    )
    if kind == "user":
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        builder = builder.add_extension(x509.UnrecognizedExtension(
            PRINCIPALS_OID, encode_strings([check_principal(n) for n in names])), critical=False)
        if allow is not None:
            builder = builder.add_extension(x509.UnrecognizedExtension(
                ALLOW_OID, encode_strings([p for p in PERMISSIONS if p in allow])),
                critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
    cert = builder.sign(key, None)
    _record_issued(directory, cert, kind, names)
    return cert


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.*-]{0,251}[A-Za-z0-9])?", name):
        raise IdentityError(f"not a host name or address: {name!r}")
    return x509.DNSName(name.lower())


def _record_issued(directory: Path, cert: x509.Certificate, kind: str,
                   names: Iterable[str]) -> None:
    der = cert.public_bytes(serialization.Encoding.DER)
    line = (f"{cert.serial_number:x} {fingerprint(der)} {kind} "
            f"{int(cert.not_valid_after_utc.timestamp())} {','.join(names)}\n")
    with open(directory / "issued", "a") as fh:
        fh.write(line)


def serial_of(directory: Path, what: str) -> int:
    """A serial given as hex (as ``tether id`` shows it) or a fingerprint the CA issued."""
    if what.startswith("SHA256:"):
        issued = directory / "issued"
        lines = issued.read_text().splitlines() if issued.exists() else []
        for line in lines:
            words = line.split()
            if len(words) >= 2 and words[1] == what:
                return int(words[0], 16)
        raise IdentityError(f"this CA issued no certificate with fingerprint {what}")
    try:
        return int(what.removeprefix("0x").replace(":", ""), 16)
    except ValueError:
        raise IdentityError(f"not a serial (hex) or fingerprint (SHA256:...): {what!r}") from None


def revoked_serials(directory: Path) -> dict[int, datetime.datetime]:
    path = directory / "revoked"
    out: dict[int, datetime.datetime] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        words = line.split()
        if len(words) >= 2:
            out[int(words[0], 16)] = datetime.datetime.fromtimestamp(int(words[1]), datetime.UTC)
    return out


def revoke(directory: Path, serial: int) -> bool:
    """Add ``serial`` to the CA's revoked list; False if it was already there."""
    load_ca_cert(directory)
    if serial in revoked_serials(directory):
        return False
    with open(directory / "revoked", "a") as fh:
        fh.write(f"{serial:x} {int(datetime.datetime.now(datetime.UTC).timestamp())}\n")
    return True


def make_crl(directory: Path, valid: datetime.timedelta = datetime.timedelta(days=30),
             passphrase: bytes | None = None) -> bytes:
    """A CRL (PEM) of every serial revoked, signed by the CA; also written to ``crl.pem``."""
    key, ca = load_ca(directory, passphrase)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - SKEW).next_update(now + valid))
    for serial, when in sorted(revoked_serials(directory).items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    pem = builder.sign(key, None).public_bytes(serialization.Encoding.PEM)
    tmp = directory / "crl.pem.tmp"
    tmp.write_bytes(pem)
    os.replace(tmp, directory / "crl.pem")
    return pem


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file (or one DER CRL)."""
    if b"-----BEGIN" not in data:
        return [x509.load_der_x509_crl(data)]
    parts = re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.S)
    if not parts:
        raise ValueError("no X509 CRL in the file")
    return [x509.load_pem_x509_crl(p) for p in parts]


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
