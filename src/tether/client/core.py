"""The client's protocol logic with no I/O: what both drivers — the asyncio API
(:mod:`tether.client.api`) and the blocking one-shot client (:mod:`tether.client.blocking`) — do
the same way, written once (httpx's BaseClient under Client and AsyncClient).

A driver owns the socket and the protocol's byte buffers; :class:`ClientCore` decides:

- the handshake: pinning the server's certificate, the hello, what the answer (or a refusal in
  its place) means, and the :class:`Welcome` kept afterwards;
- opening a command's stream (the ``exec`` request) and which streams are open;
- routing: a stream-0 error ends the connection as the tether error it stands for, connection
  chores (pings, pongs, credit) are not any stream's, everything else belongs to its stream;
- a stream's end: :class:`ExitInfo` for an ``exit``, the error class for an ``error``.

Light on purpose, like the one-shot path it serves: no asyncio, no dataclasses or typing at run
time, nothing that loads ``cryptography``.
"""

from __future__ import annotations

from tether.client import handshake
from tether.errors import ConnectionBroken, NotAuthorized, UsageError, from_wire
from tether.home import check_host, fingerprint
from tether.hosttrust import check_host_certificate
from tether.protocol.messages import Close, Credit, Error, Exec, Exit, Refused

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from tether.home import Confirm
    from tether.protocol.connection import Connection as ProtocolState
    from tether.protocol.messages import Data, Hello, Message, Welcome

# A refusal of our certificate shows up as one of these in place of the server's answer.
REFUSALS = (NotAuthorized, ConnectionBroken)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``),
    without the ipaddress module (the one-shot path pays for every import)."""
    if host in ("localhost", "::1", "[::1]"):
        return True
    parts = host.split(".")
    return (len(parts) == 4 and parts[0] == "127"
            and all(p.isdigit() and int(p) < 256 for p in parts))


def check_plaintext(host: str) -> None:
    """Plaintext only to loopback: a server only listens so there (``serve --plaintext``), and
    anything else would send commands and files unencrypted and unauthenticated over a
    network. A usage error (exit 2), decided before connecting."""
    if not is_loopback(host):
        raise UsageError(f"--plaintext is only for a server on this machine (127.0.0.1, ::1, "
                         f"localhost), not {host}: leave it out to connect with TLS")


class ExitInfo:
    """How a remote command ended, as :meth:`tether.client.api.Process.wait` returns it.

    ``status`` follows the shell (128+N when signal N killed the command), ``signal`` is N or
    None, ``timed_out`` says the server killed it for its ``timeout``, ``duration`` is seconds.
    """

    __slots__ = ("duration", "signal", "status", "timed_out")

    def __init__(self, status: int, signal: int | None = None, timed_out: bool = False,
                 duration: float = 0.0) -> None:
        self.status = status
        self.signal = signal
        self.timed_out = timed_out
        self.duration = duration

    @classmethod
    def of(cls, msg: Exit) -> ExitInfo:
        return cls(msg.shell_status, msg.signal, msg.timed_out, msg.duration)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExitInfo):
            return NotImplemented
        return (self.status, self.signal, self.timed_out, self.duration) == (
            other.status, other.signal, other.timed_out, other.duration)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ExitInfo(status={self.status!r}, signal={self.signal!r}, "
                f"timed_out={self.timed_out!r}, duration={self.duration!r})")


class ClientCore:
    """One client connection's decisions over the driver's :class:`ProtocolState`."""

    def __init__(self, proto: ProtocolState) -> None:
        self.proto = proto
        self.welcome: Welcome | None = None
        self.server_fingerprint = "plaintext"
        self.user = ""  # the account the hello asked for
        self.streams: set[int] = set()
        # where the server was pinned (home, host, port, its certificate): a key rotation
        # announced in welcome is pinned there too
        self._pinned: tuple[str | os.PathLike[str], str, int, bytes] | None = None

    # --- the handshake -------------------------------------------------------------------------

    def check_server(self, cert_der: bytes | None, home: str | os.PathLike[str], host: str,
                     port: int, accept_new: bool, confirm: Confirm | None,
                     host_cert: Mapping[str, object] | None = None) -> None:
        """Pin the server's certificate (known_hosts, or ``accept_new``/``confirm``); or, when
        the handshake verified a host certificate against a CA trusted for ``host``
        (``host_cert``: its fields, as ``getpeercert()`` gives them), check its name and
        validity (:mod:`tether.hosttrust`)."""
        self.server_fingerprint = fingerprint(cert_der or b"")
        if host_cert is not None:
            check_host_certificate(host, port, host_cert)
        else:
            check_host(home, host, port, self.server_fingerprint, accept_new, confirm)
            self._pinned = (home, host, port, cert_der or b"")

    def hello(self, user: str = "") -> Hello:
        """The first message (``user``: the Unix account asked for). In TLS 1.3 the client's
        handshake ends before the server checked our certificate: a refusal arrives only in
        place of the answer to this."""
        self.user = user
        return handshake.hello(user)

    def refused(self, exc: Exception, authenticated: bool, own_fingerprint: str,
                ca_signed: bool = False) -> Exception:
        """What a refusal in place of the answer means: with TLS, our identity was refused —
        in the server's own words when it sent them (a stream-0 error, not a TLS alert)."""
        if not authenticated or not isinstance(exc, REFUSALS):
            return exc
        if isinstance(exc, NotAuthorized) and exc.__cause__ is None:
            return NotAuthorized(f"not authorized: {exc}")
        return handshake.refused(own_fingerprint, ca_signed)

    def answer(self, event: Message | Data | Refused, authenticated: bool) -> Welcome:
        """The server's answer to the hello: the welcome (confirming the account asked for),
        or the error it stands for."""
        assert not isinstance(event, Refused)  # only a server receives openers
        self.welcome = handshake.welcome_of(event, authenticated, self.user)
        if self._pinned is not None:
            handshake.learn_next_key(*self._pinned, self.welcome)
        return self.welcome

    # --- streams -------------------------------------------------------------------------------

    def exec(self, cmd: str | Sequence[str], *, cwd: str | None = None,
             env: Mapping[str, str] | None = None, timeout: float | None = None,
             stdin: bool = True) -> Exec:
        """Open a command's stream: a string runs through the remote shell, a list as argv.
        The stream id is the protocol's next one: the driver sends the request before opening
        another."""
        argv = [cmd] if isinstance(cmd, str) else list(cmd)
        return self.open(Exec(argv=argv, shell=isinstance(cmd, str), cwd=cwd,
                              env=dict(env or {}), timeout=timeout, stdin=stdin,
                              stream=self.proto.next_stream_id()))

    def open(self, msg: Exec) -> Exec:
        """Count ``msg``'s stream as open (its opener is sent by the driver)."""
        self.streams.add(msg.stream)
        return msg

    def end(self, stream: int) -> Close | None:
        """Forget a stream; the ``close`` to send if it was still open here."""
        if stream not in self.streams:
            return None
        self.streams.discard(stream)
        return Close(stream=stream)

    def route(self, event: Message | Data | Refused) -> Message | Data | None:
        """The event for its stream, or None for the connection's own chores. A stream-0
        error is the end of the connection: raised as the tether error it stands for. Before
        the welcome, the event is the handshake's answer (the driver hands it to
        :meth:`answer`)."""
        assert not isinstance(event, Refused)  # only a server receives openers
        if self.welcome is None and not isinstance(event, Credit):
            return event
        if event.stream == 0:
            if isinstance(event, Error):
                raise from_wire(event.code, event.message)
            return None
        if isinstance(event, Credit):  # counted by the core; pings never reach us
            return None
        return event

    @staticmethod
    def outcome(event: Message) -> ExitInfo | None:
        """A stream's last word: ExitInfo for ``exit``, the error raised for ``error``,
        None for anything else."""
        if isinstance(event, Exit):
            return ExitInfo.of(event)
        if isinstance(event, Error):
            raise from_wire(event.code, event.message)
        return None


__all__ = ["ClientCore", "ExitInfo"]
