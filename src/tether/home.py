"""The files a client reads under its home on every connection: where the identity is, the
fingerprint rule, known_hosts and the pin check.

Light on purpose (``os``, ``hashlib``, ``base64``: no ``pathlib``, ``dataclasses`` or
``cryptography``), because every ``tether run`` reads them; :mod:`tether.identity` builds its
``Path``-based API on these functions. Paths are accepted as ``str`` or ``os.PathLike``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os

from tether.defaults import DEFAULT_PORT
from tether.errors import HostChanged, HostUnknown, IdentityError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Confirm = Callable[[str, str], bool]

SIGNED_CERT = "id_signed_cert.pem"  # a client's CA-signed certificate, beside its key


def home_path(home: str | os.PathLike[str] | None = None) -> str:
    """``home``, else ``$TETHER_HOME``, else ``~/.config/tether``."""
    if home is not None:
        return os.fspath(home)
    env = os.environ.get("TETHER_HOME")
    return env if env else os.path.join(os.path.expanduser("~"), ".config", "tether")


def fingerprint(cert_der: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of a certificate's DER."""
    digest = hashlib.sha256(cert_der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def identity_files(home: str | os.PathLike[str], kind: str = "client") -> tuple[str, str]:
    """The key and certificate files of the client (or ``server``) identity."""
    stem = "server" if kind == "server" else "id"
    return os.path.join(home, f"{stem}_key.pem"), os.path.join(home, f"{stem}_cert.pem")


def signed_cert_file(home: str | os.PathLike[str], kind: str = "client") -> str:
    """Where ``tether cert install`` keeps a CA-signed certificate for the identity's key: the
    client presents it instead of its self-signed one; a server presents it as its host
    certificate to clients that check host certificates."""
    return os.path.join(home, "server_host_cert.pem" if kind == "server" else SIGNED_CERT)


def require_identity(home: str | os.PathLike[str], kind: str = "client") -> tuple[str, str]:
    """The key and the certificate to present (a client's CA-signed one once installed), or
    IdentityError naming the missing identity and the fix."""
    key, cert = identity_files(home, kind)
    if not os.path.exists(key) or not os.path.exists(cert):
        fix = "tether keygen" if kind == "client" else "tether serve (it creates one)"
        raise IdentityError(f"no {kind} identity in {os.fspath(home)} (run: {fix})")
    if kind == "client" and os.path.exists(signed := signed_cert_file(home)):
        return key, signed
    return key, cert


# --- known hosts --------------------------------------------------------------------------------


def known_hosts_file(home: str | os.PathLike[str]) -> str:
    return os.path.join(home, "known_hosts")


def host_key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if port != DEFAULT_PORT else host


def _known_lines(home: str | os.PathLike[str]) -> list[str]:
    try:
        with open(known_hosts_file(home)) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def known_fingerprints(home: str | os.PathLike[str], host: str, port: int) -> list[str]:
    """Every fingerprint pinned for ``host:port``: one, or two while a server key rotates
    (the second line says ``rotated-from=OLD``)."""
    key = host_key(host, port)
    return [parts[1] for parts in map(str.split, _known_lines(home))
            if len(parts) >= 2 and parts[0] == key]


def lookup_known_host(home: str | os.PathLike[str], host: str, port: int) -> str | None:
    found = known_fingerprints(home, host, port)
    return found[0] if found else None


def add_known_host(home: str | os.PathLike[str], host: str, port: int, fp: str,
                   rotated_from: str = "") -> None:
    os.makedirs(home, mode=0o700, exist_ok=True)
    note = f" rotated-from={rotated_from}" if rotated_from else ""
    with open(known_hosts_file(home), "a") as fh:
        fh.write(f"{host_key(host, port)} {fp}{note}\n")


def _retire_rotated(home: str | os.PathLike[str], key: str, fp: str) -> None:
    """The server now presents ``fp``, pinned during a key rotation: forget the key it replaced
    (so a stolen retired key can no longer pass for the server) and the note."""
    lines = _known_lines(home)
    old = ""
    for parts in map(str.split, lines):
        if parts[:2] == [key, fp] and len(parts) > 2 and parts[2].startswith("rotated-from="):
            old = parts[2].partition("=")[2]
    if not old:
        return
    kept = []
    for line in lines:
        parts = line.split()
        if parts[:2] == [key, old]:
            continue
        kept.append(f"{key} {fp}" if parts[:2] == [key, fp] else line)
    path = known_hosts_file(home)
    tmp = os.path.join(os.path.dirname(path), f".known_hosts.{os.getpid()}.{id(kept)}.tmp")
    try:  # a name of its own: clients connecting at once never share a temporary file
        with open(tmp, "w") as fh:
            fh.write("".join(line + "\n" for line in kept))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:  # the old pin stays one more connection: harmless, tried again next time
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _shown(home: str | os.PathLike[str]) -> str:
    """The known_hosts path as pathlib writes it (as every tether message does)."""
    from pathlib import Path

    return str(Path(home) / "known_hosts")


def check_host(home: str | os.PathLike[str], host: str, port: int, fp: str, accept_new: bool,
               confirm: Confirm | None) -> None:
    """Pin the server's fingerprint, SSH-style: known, new (ask or accept), or changed (refuse)."""
    pinned = known_fingerprints(home, host, port)
    key = host_key(host, port)
    if fp in pinned:
        if len(pinned) > 1 and fp != pinned[0]:
            _retire_rotated(home, key, fp)
        return
    known = pinned[0] if pinned else None
    if known is not None:
        raise HostChanged(
            f"THE SERVER'S IDENTITY HAS CHANGED for {key}: expected {known}, got {fp}. "
            f"Someone may be intercepting the connection, or the server got a new identity. "
            f"If you know why, forget the old one with `tether known-hosts forget {host}"
            f"{'' if port == DEFAULT_PORT else f' -p {port}'}` (it edits {_shown(home)}) and "
            f"connect again."
        )
    if accept_new or (confirm is not None and confirm(key, fp)):
        add_known_host(home, host, port, fp)
        return
    raise HostUnknown(
        f"the server {key} is not known (fingerprint {fp}); "
        f"check it with the server's admin, then connect with --accept-new"
    )
