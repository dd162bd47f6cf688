"""Every error tether raises, in one tree.

::

    TetherError
    ├── ProtocolError                 the byte stream or message sequence broke the protocol
    │   ├── LocalProtocolError        we tried to send something the protocol forbids (a bug here)
    │   └── RemoteProtocolError       the peer sent something the protocol forbids
    ├── VersionMismatch               no protocol version in common
    ├── ConnectionFailed              the connection could not be made or did not survive
    │   ├── ConnectionRefused         the host answered that nothing listens there (never reached)
    │   ├── ConnectionClosed          we closed it, and then tried to use it
    │   ├── ConnectionBroken          the peer or the network ended it
    │   ├── ServerShuttingDown        the server said it is stopping
    │   └── ConnectTimeout            connect + TLS + welcome not done within the deadline
    ├── AuthError                     someone's identity was not accepted
    │   ├── NotAuthorized             the server does not know our identity
    │   ├── HostUnknown               the server's fingerprint is not pinned and was not accepted
    │   ├── HostChanged               the server's fingerprint differs from the pinned one
    │   └── HostCertificateRefused    the server's host certificate is not valid for it
    ├── IdentityError                 our own key or certificate is missing or unreadable
    ├── UsageError                    the command line is wrong (the CLI exits 2)
    ├── ConfigError                   a setting or configuration file is wrong (the CLI exits 1)
    └── RemoteError                   one operation was refused or failed; the connection lives on
        ├── CommandFailed             run(check=True): the command exited non-zero
        ├── BadRequest                the request itself is wrong (empty command, bad argument)
        ├── PermissionDenied          this client may not do that
        ├── NotFound                  a file or directory named by the request does not exist
        ├── AlreadyExists             the destination exists (use force or rename)
        ├── NoSpace                   the disk filled up (a large file's partial is kept for resume)
        ├── IntegrityError            the bytes received do not hash to the bytes sent
        ├── SourceChanged             the source grew or shrank while it was being sent
        ├── Busy                      another transfer is writing the same destination
        ├── UnsafePath                a path tried to leave where it may go
        ├── NoTerminal                the server cannot give a pseudo-terminal
        └── SpawnFailed               the command could not be started

The CLI turns each class into one line and an exit status through one table,
:data:`tether.cli.policy.EXIT_STATUSES`.

Wire error codes (docs/PROTOCOL.md, "Errors") map to classes through :data:`WIRE_CODES`, so a
client raises the same class the server meant. Lower-layer errors (OSError, ssl.SSLError) are
translated into this tree at one boundary, in ``tether.net``.
"""

from __future__ import annotations


class TetherError(Exception):
    """Base of every tether error. ``code`` is the wire error code, when there is one."""

    code = "internal"


class ProtocolError(TetherError):
    code = "protocol"


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    pass


class VersionMismatch(TetherError):
    code = "unsupported_version"


class ConnectionFailed(TetherError):
    code = "connection"


class ConnectionRefused(ConnectionFailed):
    """The server's host was reached but refused the TCP connection: no tether server listens
    on that port. The connection never existed (as opposed to :class:`ConnectionBroken`)."""


class ConnectionClosed(ConnectionFailed):
    pass


class ConnectionBroken(ConnectionFailed):
    pass


class ServerShuttingDown(ConnectionFailed):
    code = "shutting_down"


class ConnectTimeout(ConnectionFailed):
    """Connecting, the TLS handshake and the server's welcome together took longer than the
    connect timeout (one deadline for all three, however slowly the bytes drip). Not a
    TimeoutError: the host was never reached, as far as the caller is concerned."""


class AuthError(TetherError):
    code = "auth"


class NotAuthorized(AuthError):
    code = "not_authorized"


class HostUnknown(AuthError):
    code = "host_unknown"


class HostChanged(AuthError):
    code = "host_changed"


class HostCertificateRefused(AuthError):
    code = "host_certificate"


class IdentityError(TetherError):
    code = "identity"


class UsageError(TetherError):
    """The command line asks for something that cannot be done (a bad option combination)."""

    code = "usage"


class ConfigError(TetherError):
    """A setting or a configuration file (hosts.toml, an option's value) is wrong."""

    code = "config"


class RemoteError(TetherError):
    code = "failed"


class CommandFailed(RemoteError):
    """``run(check=True)``: the command ran and exited non-zero (like AsyncSSH's ProcessError).

    ``status`` follows the shell (128+N when signal N killed it), ``signal`` is N or None;
    ``stdout`` and ``stderr`` are what the command wrote. Never sent on the wire.
    """

    code = "command_failed"

    def __init__(self, argv: list[str], status: int, signal: int | None = None,
                 stdout: bytes = b"", stderr: bytes = b"", timed_out: bool = False) -> None:
        self.argv = argv
        self.status = status
        self.signal = signal
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        what = f"killed by signal {signal}" if signal else f"exited with status {status}"
        if timed_out:
            what = f"timed out ({what})"
        super().__init__(f"command {' '.join(argv)[:80]!r} {what}")


class BadRequest(RemoteError):
    code = "bad_request"


class PermissionDenied(RemoteError):
    code = "permission_denied"


class NotFound(RemoteError):
    code = "not_found"


class SpawnFailed(RemoteError):
    code = "spawn_failed"


class AlreadyExists(RemoteError):
    code = "exists"


class NoSpace(RemoteError):
    code = "no_space"


class IntegrityError(RemoteError):
    code = "integrity"


class SourceChanged(RemoteError):
    code = "changed"


class Busy(RemoteError):
    code = "busy"


class UnsafePath(RemoteError):
    code = "unsafe_path"


class NoTerminal(RemoteError):
    code = "no_pty"


WIRE_CODES: dict[str, type[TetherError]] = {
    cls.code: cls
    for cls in (
        ProtocolError,
        ConnectionFailed,
        VersionMismatch,
        ServerShuttingDown,
        NotAuthorized,
        RemoteError,
        BadRequest,
        PermissionDenied,
        NotFound,
        SpawnFailed,
        AlreadyExists,
        NoSpace,
        IntegrityError,
        SourceChanged,
        Busy,
        UnsafePath,
        NoTerminal,
    )
}
WIRE_CODES["protocol"] = RemoteProtocolError


def from_wire(code: str, message: str) -> TetherError:
    """The exception a peer's error frame stands for; unknown codes become RemoteError."""
    return WIRE_CODES.get(code, RemoteError)(message)
