"""Connection sharing, the client's side: where this user's mux listens, asking it for a shared
connection to a host, starting it on demand, and its control requests.

The mux (:mod:`tether.client.muxd`, started by ``tether mux start``) is one background process
per user and tether home. It keeps one authenticated connection per host and lends streams on it
to local clients over a Unix socket, like OpenSSH's ControlMaster. On that socket a client sends
one JSON line and reads one JSON line back::

    -> {"op": "connect", "host": H, "port": P, "user": ACCOUNT, "home": REALPATH,
        "identity": FINGERPRINT, "accept_new": false, "keepalive": 0, "persist": 60}
    <- {"ok": true, "fingerprint": SERVER-FINGERPRINT}      or {"ok": false, "code", "message"}

after which, for ``connect``, the socket carries tether frames exactly as a plaintext connection
would (``hello``, ``welcome``, streams, docs/PROTOCOL.md): the mux answers ``hello`` with the
server's ``welcome``, renumbers stream ids and relays frames both ways; flow control is end to
end. Control requests are ``status``, ``stop`` and ``forget`` (host, port). The mux accepts only
its own user (SO_PEERCRED) and relays only for its own home and identity.

This module is on the one-shot path: it imports nothing heavy until it has to start a mux.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

from tether.errors import TetherError, from_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MODES = ("auto", "existing", "no")  # start one if needed / only one already running / never
DEFAULT_PERSIST = 60.0  # seconds an idle shared connection, and then the mux, stays up
MAX_LINE = 64 * 1024  # a request or reply line, at most
START_TIMEOUT = 10.0  # seconds a started mux may take to listen
SUN_PATH_MAX = 107  # bytes in a Unix socket path, at most (Linux's sun_path less the NUL)


class MuxUnavailable(TetherError):
    """No mux could be used (none runs, it could not start, or it serves another identity):
    the caller connects directly instead."""

    code = "mux_unavailable"


def socket_path(home: str | os.PathLike[str]) -> str:
    """The mux socket for ``home``: under ``$XDG_RUNTIME_DIR/tether``, else in the home itself
    (``mux.sock``); either way a name only this user's processes can reach."""
    real = os.path.realpath(os.fspath(home))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        tag = hashlib.sha256(real.encode()).hexdigest()[:16]
        return os.path.join(runtime, "tether", f"mux-{tag}.sock")
    return os.path.join(real, "mux.sock")


def usable_path(home: str | os.PathLike[str]) -> str:
    path = socket_path(home)
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise MuxUnavailable(f"the mux socket path is too long for a Unix socket: {path}")
    return path


def identity_fingerprint(home: str | os.PathLike[str]) -> str:
    """The fingerprint of ``home``'s client certificate (PEM read here: no cryptography)."""
    import base64

    from tether.home import fingerprint, require_identity

    _, cert = require_identity(home)
    with open(cert) as fh:
        lines = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("-----")]
    return fingerprint(base64.b64decode("".join(lines)))


# --- talking to a running mux -------------------------------------------------------------------


def _send_line(sock: socket.socket, payload: dict[str, Any]) -> None:
    sock.sendall(json.dumps(payload, separators=(",", ":")).encode() + b"\n")


def _read_line(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise MuxUnavailable("the mux closed the connection")
        data += chunk
        if len(data) > MAX_LINE:
            raise MuxUnavailable("the mux sent an oversized reply")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise MuxUnavailable("the mux sent a malformed reply")
    return reply


def _dial(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def request(home: str | os.PathLike[str], payload: dict[str, Any],
            timeout: float = 10.0) -> dict[str, Any]:
    """Send one control request (``status``, ``stop``, ``forget``) to a running mux; its reply.
    Raises MuxUnavailable when none runs."""
    try:
        sock = _dial(usable_path(home), timeout)
    except OSError as exc:
        raise MuxUnavailable(f"no mux is running ({exc.strerror or exc})") from exc
    with sock:
        try:
            _send_line(sock, payload)
            return _read_line(sock)
        except (OSError, ValueError) as exc:
            raise MuxUnavailable(f"the mux did not answer: {exc}") from exc


def forget(host: str, port: int, home: str | os.PathLike[str] | None = None) -> bool:
    """Have the mux drop its connection to host:port (it closes once its streams end); False
    when no mux runs."""
    from tether.home import home_path

    try:
        request(home_path(home), {"op": "forget", "host": host, "port": port})
    except MuxUnavailable:
        return False
    return True


def running(home: str | os.PathLike[str]) -> bool:
    """Whether this home's mux socket is there (a cheap look, no connection: ``existing`` mode
    costs a command without a mux one ``stat``)."""
    return os.path.exists(socket_path(home))


def open_shared(home: str | os.PathLike[str], host: str, port: int, *,
                accept_new: bool = False, keepalive: float | None = None,
                persist: float = DEFAULT_PERSIST, start: bool = True,
                timeout: float = 10.0, user: str = "") -> tuple[socket.socket, str]:
    """A Unix socket to the mux on which tether's plaintext handshake comes next (its hello
    asking for the same account ``user``, "": the server's choice), and the server's
    fingerprint. Starts the mux when none runs (``start``). MuxUnavailable: connect directly;
    other TetherErrors are the host's own answer (unreachable, not authorized, unknown)."""
    path = usable_path(home)
    sock = _dial_or_start(path, home, persist, start, timeout)
    try:
        payload = {
            "op": "connect", "host": host, "port": port, "user": user,
            "home": os.path.realpath(home),
            "identity": identity_fingerprint(home), "accept_new": accept_new,
            "keepalive": keepalive or 0, "persist": persist,
        }
    except BaseException:
        sock.close()
        raise
    try:
        _send_line(sock, payload)
        reply = _read_line(sock)
    except (OSError, ValueError) as exc:
        sock.close()
        raise MuxUnavailable(f"the mux did not answer: {exc}") from exc
    if not reply.get("ok"):
        sock.close()
        code, message = str(reply.get("code", "")), str(reply.get("message", ""))
        raise _error_of(code, message)
    return sock, str(reply.get("fingerprint", ""))


def _error_of(code: str, message: str) -> TetherError:
    """The error the mux's refusal stands for: a wire code, or one of the client's own errors
    (an unknown or changed server, a missing identity) that never cross the wire."""
    from tether.errors import HostCertificateRefused, HostChanged, HostUnknown, IdentityError

    local = {cls.code: cls for cls in (MuxUnavailable, HostUnknown, HostChanged, IdentityError,
                                       HostCertificateRefused)}
    return local[code](message) if code in local else from_wire(code, message)


def _dial_or_start(path: str, home: str | os.PathLike[str], persist: float, start: bool,
                   timeout: float) -> socket.socket:
    try:
        return _dial(path, timeout)
    except OSError as exc:
        if not start:
            raise MuxUnavailable(f"no mux is running ({exc.strerror or exc})") from exc
    spawn(home, persist)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return _dial(path, timeout)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise MuxUnavailable(f"the mux did not start ({exc.strerror or exc})") from exc
            time.sleep(0.01)


def spawn(home: str | os.PathLike[str], persist: float) -> None:
    """Run ``tether mux start``, which returns once the mux listens (or another one does)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "tether", "mux", "start", "--home", os.fspath(home),
            "--persist", str(persist)]
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=START_TIMEOUT, check=False,
                       env={**os.environ, "TETHER_FULL_CLI": "1"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MuxUnavailable(f"could not start the mux: {exc}") from exc
