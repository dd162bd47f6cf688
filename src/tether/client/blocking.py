"""A blocking client connection for the one-shot CLI: a socket (TLS through the ``ssl`` module,
or plaintext) driving the sans-I/O :class:`tether.protocol.Connection`, without asyncio.

``tether run`` lives for one command, so starting up is most of what it costs: this module and
what it imports stay small (no asyncio, dataclasses, typing or cryptography). It connects,
authenticates and pins exactly like :func:`tether.connect`, through the same shared pieces
(:mod:`tether.home`, :mod:`tether.client.handshake`, :mod:`tether.net.translate`), and reports
connection failures with the same messages. After the handshake the socket is non-blocking: the
caller's select loop calls :meth:`BlockingConnection.flush` when :attr:`wants_write` and
:meth:`BlockingConnection.receive` when the socket is readable, so that neither side can stall
the other by filling a buffer.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from tether.client import handshake
from tether.errors import (
    ConnectionBroken,
    NotAuthorized,
    RemoteProtocolError,
    TetherError,
    from_wire,
)
from tether.home import check_host, fingerprint
from tether.net.translate import translate
from tether.protocol.connection import CLOSED, NEED_DATA, Connection
from tether.protocol.messages import Credit, Data, Error, Message, Role, Welcome

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from typing import Any

    from tether.home import Confirm

READ_SIZE = 256 * 1024
SNI: Any = b"tether"  # the name the async client sends too; as bytes, no idna codec is loaded
FINISH_TIMEOUT = 2.0  # seconds the last frames may take to leave


class BlockingConnection:
    """An authenticated connection; :attr:`welcome` is the server's answer to our hello."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.proto = Connection(Role.CLIENT)
        self.welcome: Welcome | None = None
        self.closed = False  # the peer closed the connection
        self._out = bytearray()
        self._eof = False

    # --- sending: queued, written by flush ---------------------------------------------------

    def send(self, msg: Message) -> None:
        self._out += self.proto.send(msg)

    def send_data(self, stream: int, data: bytes) -> None:
        """Queue DATA on channel 0; the caller keeps within ``proto.send_window(stream)``."""
        self._out += self.proto.send_data(stream, 0, data)

    def consumed(self, stream: int, size: int) -> None:
        """The application used ``size`` bytes of the stream's output: grant credit if due."""
        self._out += self.proto.consumed(stream, size)

    @property
    def wants_write(self) -> int:
        """How many queued bytes wait for the socket to take them."""
        return len(self._out)

    def flush(self) -> None:
        """Write what the socket takes now (all of it while the socket is still blocking)."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return  # TLS retries the same bytes, so they stay queued as they are
            except OSError as exc:
                raise translate(exc) from exc
            del self._out[:sent]

    # --- receiving -----------------------------------------------------------------------------

    def receive(self) -> list[Message | Data]:
        """Read what has arrived and return the complete events (credit is handled here).

        Sets :attr:`closed` when the peer closed the connection after whole frames; a stream-0
        error is raised as the tether error it stands for.
        """
        self._read()
        events: list[Message | Data] = []
        while not self.closed:
            try:
                event = self.proto.next_event()
            except RemoteProtocolError as exc:
                if self._eof:  # cut short by the peer or the network: not a violation
                    raise ConnectionBroken(f"connection lost: {exc}") from None
                self._tell_peer(exc)
                raise
            if event is NEED_DATA:
                break
            if event is CLOSED:
                self.closed = True
            elif isinstance(event, Error) and event.stream == 0:
                raise from_wire(event.code, event.message)
            elif not isinstance(event, Credit):  # credit: the protocol has counted it
                assert not isinstance(event, type(NEED_DATA))
                events.append(event)
        return events

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
            pending = getattr(self.sock, "pending", None)
            while data and pending is not None and pending():
                data += self.sock.recv(pending())  # TLS: decrypted bytes select cannot see
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except OSError as exc:
            raise translate(exc) from exc
        self._eof = not data
        self.proto.receive_data(data)

    def _tell_peer(self, exc: RemoteProtocolError) -> None:
        """Send a stream-0 error saying why we give up (best effort: the peer misbehaved)."""
        with contextlib.suppress(Exception):
            self._out += self.proto.send(Error(code=exc.code, message=str(exc)))
            self.flush()

    def next_events(self) -> list[Message | Data]:
        """Block until at least one event arrives (the handshake's answer)."""
        while True:
            events = self.receive()
            if events:
                return events
            if self.closed:
                raise ConnectionBroken("connection closed by peer")

    def finish(self) -> None:
        """Send what is still queued (a final close, forwarded signals) within a moment; close."""
        with contextlib.suppress(OSError, TetherError):
            if self._out:
                self.sock.settimeout(FINISH_TIMEOUT)
                self.flush()
        self.close()

    def close(self) -> None:
        """Close without waiting: leaving is how a client abandons its streams."""
        with contextlib.suppress(OSError, ValueError):
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.setblocking(False)
                self.sock.unwrap()  # close_notify, as asyncio sends; the peer's is not awaited
        self.sock.close()


def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket, trying each address in turn; failures read as asyncio's do."""
    deadline = time.monotonic() + timeout
    # an ASCII name as bytes: a str would load the idna codec (a millisecond) to encode it
    infos = socket.getaddrinfo(host.encode() if host.isascii() else host, port,
                               type=socket.SOCK_STREAM)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(address)
        except OSError as exc:
            sock.close()
            errors.append(OSError(exc.errno, f"Connect call failed {address}") if exc.errno
                          else exc)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if all(str(exc) == str(errors[0]) for exc in errors):
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


def connect(host: str, port: int, home: str | os.PathLike[str], *,
            context: ssl.SSLContext | None, cert: str = "", accept_new: bool = False,
            confirm: Confirm | None = None, timeout: float = 10.0) -> BlockingConnection:
    """Connect, pin the server (:func:`tether.home.check_host`) and exchange hello/welcome.

    ``context`` is the client's TLS context (:func:`tether.tls.client_context_files`), None for
    a plaintext server; ``cert`` is this client's certificate file, named if we are refused.
    """
    try:
        sock = _tcp(host, port, timeout)
        if context is not None:
            sock.settimeout(timeout)
            sock = context.wrap_socket(sock, server_hostname=SNI)
    except OSError as exc:
        raise translate(exc) from exc
    conn = BlockingConnection(sock)
    try:
        if isinstance(sock, ssl.SSLSocket):
            server_fp = fingerprint(sock.getpeercert(binary_form=True) or b"")
            check_host(home, host, port, server_fp, accept_new, confirm)
        try:
            conn.send(handshake.hello())
            conn.flush()
            answer = conn.next_events()[0]
        except (NotAuthorized, ConnectionBroken) as exc:
            if context is None:
                raise
            raise handshake.refused(_own_fingerprint(cert)) from exc
        conn.welcome = handshake.welcome_of(answer, context is not None)
        sock.setblocking(False)
    except BaseException:
        conn.close()
        raise
    return conn


def _own_fingerprint(cert: str) -> str:
    """This client's fingerprint, for the refusal message (read only when refused)."""
    try:
        with open(cert) as fh:
            return fingerprint(ssl.PEM_cert_to_DER_cert(fh.read()))
    except (OSError, ValueError):
        return "(unreadable certificate)"
