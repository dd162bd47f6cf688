"""Rotating the server's key without a "THE SERVER'S IDENTITY HAS CHANGED" error.

The same idea as OpenSSH's ``UpdateHostKeys``: for an overlap the server keeps presenting its old
key in TLS, and in ``welcome`` it announces the next certificate (``next_cert``) with a signature
over it by the old key (``next_proof``, docs/PROTOCOL.md). A client that pinned the old key, and
so trusts it, checks the signature and pins the new fingerprint beside the old one
(:func:`tether.client.handshake.learn_next_key`). When the overlap ends the new key replaces the
old one, whose private key is deleted (retired): clients that connected during the overlap carry
on silently; those that did not get the CHANGED error, as they should.

Files in the server's home during an overlap: ``server_next_key.pem``, ``server_next_cert.pem``
and ``server_next.json`` (when the overlap ends, the proof, the new fingerprint).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tether.errors import ConfigError, IdentityError
from tether.home import fingerprint, signed_cert_file
from tether.identity import Identity, generate_identity, load_identity
from tether.protocol.messages import NEXT_KEY_CONTEXT

log = logging.getLogger("tether.server")

NEXT_KEY, NEXT_CERT, STATE = "server_next_key.pem", "server_next_cert.pem", "server_next.json"
DEFAULT_OVERLAP = 7 * 86400.0
REFRESH_EVERY = 1.0  # seconds between looks at the files (one stat each) on new connections


@dataclass(frozen=True)
class NextKey:
    """The key that will replace the current one when ``until`` (epoch seconds) comes."""

    cert_der: bytes
    proof: bytes
    until: float

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_der)


def load_next(home: Path) -> NextKey | None:
    """The pending rotation, if any (a damaged one is logged and ignored)."""
    state = home / STATE
    if not state.exists():
        return None
    try:
        info = json.loads(state.read_text())
        import ssl

        der = ssl.PEM_cert_to_DER_cert((home / NEXT_CERT).read_text())
        return NextKey(der, base64.b64decode(info["proof"]), float(info["until"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("ignoring the damaged key rotation in %s: %s", state, exc)
        return None


def start_rotation(home: Path, overlap: float) -> NextKey:
    """Make the next server key, signed by the current one; it takes over after ``overlap``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if overlap < 0:
        raise ConfigError("the key overlap must be 0 seconds or more")
    current = load_identity(home, "server")
    pending = load_next(home)
    if pending is not None:
        raise ConfigError(f"a key rotation is already under way (new key {pending.fingerprint}, "
                          f"the old key retires at {_when(pending.until)}); "
                          f"end it now with: tether rotate-key --retire")
    old_key = serialization.load_pem_private_key(current.key_path.read_bytes(), None)
    if not isinstance(old_key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{current.key_path} is not an Ed25519 key")
    scratch = home / ".rotation.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        fresh = generate_identity(scratch, current.name, "server")
        os.replace(fresh.key_path, home / NEXT_KEY)
        os.replace(fresh.cert_path, home / NEXT_CERT)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    proof = old_key.sign(NEXT_KEY_CONTEXT + fresh.cert_der)
    until = time.time() + overlap
    _write_state(home, {"until": until, "fingerprint": fresh.fingerprint,
                        "proof": base64.b64encode(proof).decode()})
    return NextKey(fresh.cert_der, proof, until)


def _write_state(home: Path, info: dict[str, object]) -> None:
    tmp = home / (STATE + ".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, home / STATE)


def retire_now(home: Path) -> str:
    """End the overlap now: the next key becomes the key, the old one is deleted. Returns the
    new fingerprint."""
    pending = load_next(home)
    if pending is None:
        raise ConfigError(f"no key rotation under way in {home}")
    _promote(home)
    return pending.fingerprint


def retire_if_due(home: Path) -> str:
    """At start: a rotation whose overlap ended while the server was down ends now, before the
    key is loaded (else the retired key would be presented until the first refresh). Returns
    the new fingerprint, or "" when no rotation was due."""
    pending = load_next(home)
    if pending is None or time.time() < pending.until:
        return ""
    _promote(home)
    return pending.fingerprint


def _promote(home: Path) -> None:
    """The next key replaces the current one (each file by an atomic rename). A CA-signed host
    certificate is for the old key: it is moved aside first (presented with the new key, it
    would fail every handshake), and the log says how to get one for the new key."""
    host_cert = Path(signed_cert_file(home, "server"))
    if host_cert.exists():
        os.replace(host_cert, host_cert.with_name(host_cert.name + ".retired"))
        log.warning("key rotation: the host certificate %s was for the retired key (now %s."
                    "retired); clients that check host certificates need one for the new key: "
                    "have the CA sign `tether id --server` (tether ca sign-host), then "
                    "`tether cert install --server LINE`", host_cert, host_cert.name)
    os.replace(home / NEXT_KEY, home / "server_key.pem")
    os.replace(home / NEXT_CERT, home / "server_cert.pem")
    (home / STATE).unlink(missing_ok=True)
    log.info("key rotation: the old server key is retired")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class KeyRotation:
    """The running server's view of its key: the current identity and the pending next key.

    :meth:`refresh` is called on new connections (at most once a second does it look at the
    files) and on SIGHUP; when an overlap has ended it promotes the next key itself.
    """

    def __init__(self, home: Path, identity: Identity | None) -> None:
        self.home = home
        self.identity = identity
        self.next = load_next(home) if identity is not None else None
        self._checked = time.monotonic()
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple[object, ...]:
        stamp: list[object] = []
        for name in (STATE, "server_cert.pem"):
            try:
                st = os.stat(self.home / name)
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def announced(self) -> tuple[str, str]:
        """``welcome``'s ``next_cert`` and ``next_proof``: set during an overlap only."""
        if self.next is None:
            return "", ""
        return (base64.b64encode(self.next.cert_der).decode(),
                base64.b64encode(self.next.proof).decode())

    def refresh(self, force: bool = False) -> bool:
        """Look at the files again; True when the current identity changed."""
        if self.identity is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < REFRESH_EVERY:
            return False
        self._checked = now
        due = self.next is not None and time.time() >= self.next.until
        stamp = self._files_stamp()
        if not force and not due and stamp == self._stamp:
            return False
        if due:
            try:
                _promote(self.home)
            except OSError as exc:
                log.error("key rotation: cannot retire the old key: %s", exc)
        self.next = load_next(self.home)
        self._stamp = self._files_stamp()
        try:
            current = load_identity(self.home, "server")
        except IdentityError as exc:
            log.error("keeping the running server identity: %s", exc)
            return False
        if self.next is not None:
            log.info("key rotation under way: next key %s, the old one retires at %s",
                     self.next.fingerprint, _when(self.next.until))
        if current.cert_der == self.identity.cert_der:
            return False
        log.info("server identity is now %s", current.fingerprint)
        self.identity = current
        return True
