"""A blocking client connection for the one-shot CLI: a socket (TLS through the ``ssl`` module,
or plaintext) driving the sans-I/O :class:`tether.protocol.Connection`, without asyncio.

``tether run`` lives for one command, so starting up is most of what it costs: this module and
what it imports stay small (no asyncio, dataclasses, typing or cryptography). It connects,
authenticates and pins exactly like :func:`tether.connect`, through the same I/O-free client
core (:mod:`tether.client.core`) and error translation (:mod:`tether.net.translate`), and
reports connection failures with the same messages. After the handshake the socket is
non-blocking: the caller's select loop calls :meth:`BlockingClient.flush` when
:attr:`wants_write` and :meth:`BlockingClient.receive` when the socket is readable, so that
neither side can stall the other by filling a buffer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl

from tether.client.core import REFUSALS, ClientCore
from tether.client.deadline import TLS, WELCOME, Deadline
from tether.defaults import CONNECT_TIMEOUT
from tether.errors import ConnectionBroken, ConnectionFailed, RemoteProtocolError, TetherError
from tether.home import SIGNED_CERT, fingerprint
from tether.hosttrust import refused_in_handshake
from tether.net.translate import reaching, translate
from tether.protocol.connection import CLOSED, NEED_DATA
from tether.protocol.connection import Connection as ProtocolState
from tether.protocol.messages import Data, Error, Message, Role, Welcome

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator
    from typing import Any

    from tether.home import Confirm

RECV_SIZE = 256 * 1024  # bytes taken from the socket per call (all of it that has arrived)
READ_BUDGET = 1024 * 1024  # bytes read per turn of the caller's loop, at most
SNI: Any = b"tether"  # the name the async client sends too; as bytes, no idna codec is loaded
HOST_SNI: Any = b"host-certificate.tether.invalid"  # tether.tls.HOST_CERT_SNI: "show your
# host certificate" (tls is not imported here: the caller built the context)
FINISH_TIMEOUT = 2.0  # seconds the last frames may take to leave


class BlockingClient:
    """A blocking driver of :class:`ClientCore`; :attr:`welcome` is the server's answer.

    TLS runs over memory BIOs (as asyncio's does), not as an ``ssl.SSLSocket``: that one reads
    each 16 KiB record with two system calls, which made bulk output CPU-bound in the kernel;
    here one ``recv_into`` takes everything that has arrived and OpenSSL decrypts it in memory.
    """

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None = None,
                 incoming: ssl.MemoryBIO | None = None,
                 outgoing: ssl.MemoryBIO | None = None) -> None:
        self.sock = sock
        self.tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self.proto = ProtocolState(Role.CLIENT)
        self.core = ClientCore(self.proto)
        self.early: list[Message | Data] = []  # events that came in with the welcome
        self.request: Message | None = None  # the request pipelined behind the hello
        self.closed = False  # the peer closed the connection
        self._out = bytearray()  # bytes for the socket (ciphertext with TLS)
        self._eof = False
        self._buffer = memoryview(bytearray(RECV_SIZE))

    @property
    def welcome(self) -> Welcome | None:
        return self.core.welcome

    # --- sending: queued, written by flush ---------------------------------------------------

    def _queue(self, data: bytes) -> None:
        if not data:
            return
        if self.tls is None:
            self._out += data
            return
        assert self._outgoing is not None
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:
            raise translate(exc) from exc
        self._out += self._outgoing.read()

    def send(self, msg: Message) -> None:
        self._queue(self.proto.send(msg))

    def send_data(self, stream: int, data: bytes) -> None:
        """Queue DATA on channel 0; the caller keeps within ``proto.send_window(stream)``."""
        self._queue(self.proto.send_data(stream, 0, data))

    def consumed(self, stream: int, size: int) -> None:
        """The application used ``size`` bytes of the stream's output (the core grants credit
        when due; the next flush sends it)."""
        self.proto.consumed(stream, size)
        self._queue(self.proto.data_to_send())

    @property
    def wants_write(self) -> int:
        """How many queued bytes wait for the socket to take them."""
        return len(self._out)

    def flush(self) -> None:
        """Write what the socket takes now (all of it while the socket is still blocking)."""
        while self._out:
            sent = self._io(self.sock.send, self._out)
            if sent is None:
                return
            del self._out[:sent]

    def _io(self, call: Callable[[Any], int], buffer: Any) -> int | None:
        """``call(buffer)`` on the socket: None if it would block; OSError becomes ours."""
        try:
            return call(buffer)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise translate(exc) from exc

    # --- receiving -----------------------------------------------------------------------------

    def receive(self) -> list[Message | Data]:
        """Read what has arrived and return the complete events (the core answers the
        server's keepalive pings itself: the next flush sends its pongs).

        Sets :attr:`closed` when the peer closed the connection after whole frames; the core
        routes the rest (a stream-0 error is raised as the tether error it stands for).
        """
        self._read()
        events, self.early = self.early, []
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
                continue
            assert not isinstance(event, type(NEED_DATA))
            routed = self.core.route(event)
            if routed is not None:
                events.append(routed)
        self._queue(self.proto.data_to_send())
        return events

    def _read(self) -> None:
        """Feed the protocol what has arrived: once while the socket blocks (the handshake),
        then until the socket has nothing more or READ_BUDGET bytes were read. Bytes land in
        the frame decoder's own buffer (plaintext: received there; TLS: decrypted there)."""
        total = 0
        while total < READ_BUDGET and not self._eof:
            if self.tls is None:
                size = self._io(self.sock.recv_into, self.proto.get_buffer(RECV_SIZE))
                if size is None:
                    return
                self._got(size)
            else:
                size = self._io(self.sock.recv_into, self._buffer)
                if size is None:
                    return
                self._decrypt(self._buffer[:size])
            if self.sock.gettimeout() != 0.0:
                return  # blocking: another read would wait for bytes that may never come
            total += size

    def _got(self, size: int) -> None:
        """``size`` bytes were written into the protocol's buffer; none: the peer's end."""
        self._eof = size == 0
        if self._eof:
            self.proto.receive_data(b"")
        else:
            self.proto.buffer_updated(size)

    def _decrypt(self, data: memoryview) -> None:
        """TLS bytes from the socket (empty at its end), decrypted into the protocol."""
        assert self.tls is not None and self._incoming is not None
        assert self._outgoing is not None
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        while not self._eof:
            space = self.proto.get_buffer(RECV_SIZE)
            try:
                # with a buffer, read() returns the count (typeshed says bytes)
                size: int = self.tls.read(len(space), space)  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                size = 0  # close_notify, or an end without one (like suppress_ragged_eofs)
            except ssl.SSLError as exc:
                raise translate(exc) from exc
            self._got(size)
        self._out += self._outgoing.read()  # TLS may answer (a key update)

    def _tell_peer(self, exc: RemoteProtocolError) -> None:
        """Send a stream-0 error saying why we give up (best effort: the peer misbehaved)."""
        with contextlib.suppress(Exception):
            self._queue(self.proto.send(Error(code=exc.code, message=str(exc))))
            self.flush()

    def next_events(self, deadline: Deadline) -> list[Message | Data]:
        """Block until at least one event arrives (the handshake's answer), by ``deadline``
        however slowly its bytes come."""
        while True:
            self.sock.settimeout(deadline.left())
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
            if self.tls is not None and self._outgoing is not None:
                with contextlib.suppress(ssl.SSLError):
                    self.tls.unwrap()  # close_notify, as asyncio sends; the peer's: not awaited
                self.sock.setblocking(False)
                self.sock.send(self._outgoing.read())
        self.sock.close()


def _tls(sock: socket.socket, context: ssl.SSLContext, deadline: Deadline,
         sni: Any = SNI) -> BlockingClient:
    """The TLS handshake over ``sock`` (blocking, by ``deadline``), through memory BIOs."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.settimeout(deadline.left())
            sock.sendall(outgoing.read())
            data = sock.recv(RECV_SIZE)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
    sock.sendall(outgoing.read())
    return BlockingClient(sock, tls, incoming, outgoing)


def _tcp(host: str, port: int, deadline: Deadline) -> socket.socket:
    """A connected TCP socket, trying each address in turn (each with all the time that is
    left); failures read as asyncio's do."""
    # an ASCII name as bytes: a str would load the idna codec (a millisecond) to encode it
    infos = socket.getaddrinfo(host.encode() if host.isascii() else host, port,
                               type=socket.SOCK_STREAM)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise deadline.expired() from None
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
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
            confirm: Confirm | None = None, timeout: float = CONNECT_TIMEOUT,
            by_ca: bool = False, user: str = "",
            request: Callable[[ClientCore], Message] | None = None) -> BlockingClient:
    """Connect, check the server (its pin, or its host certificate when ``by_ca``: see
    :mod:`tether.hosttrust`) and exchange hello/welcome, asking for the account ``user`` (the
    core decides; this does I/O), all of it within ``timeout`` seconds
    (:class:`~tether.client.deadline.Deadline`).

    ``context`` is the client's TLS context (:func:`tether.hosttrust.client_context`), None for
    a plaintext server; ``cert`` is this client's certificate file, named if we are refused.
    ``request(core)`` makes a first request that goes right behind the hello, in the same
    flight (docs/PROTOCOL.md, "Pipelining"): its answer comes a round trip sooner, and a refused
    client's request is never read. It is :attr:`BlockingClient.request`; events that arrive
    with the welcome wait in :attr:`BlockingClient.early` for the first :meth:`receive`.
    """
    if context is None:
        from tether.client.core import check_plaintext

        check_plaintext(host)
    deadline = Deadline(host, port, timeout)
    try:
        sock = _tcp(host, port, deadline)
    except OSError as exc:
        raise reaching(exc, host, port) from exc
    try:
        deadline.phase = TLS
        conn = (BlockingClient(sock) if context is None
                else _tls(sock, context, deadline, HOST_SNI if by_ca else SNI))
    except TimeoutError:
        sock.close()
        raise deadline.expired() from None
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise refused_in_handshake(host, port, exc) from exc
    except BaseException as exc:  # ssl.SSLError included
        sock.close()
        if isinstance(exc, OSError):
            raise reaching(exc, host, port) from exc
        raise
    try:
        core = conn.core
        if conn.tls is not None:
            with deadline.paused():  # the user may be asked
                core.check_server(conn.tls.getpeercert(binary_form=True), home, host, port,
                                  accept_new, confirm,
                                  conn.tls.getpeercert() if by_ca else None)
        deadline.phase = WELCOME
        try:
            with _in_time(deadline):
                sock.settimeout(deadline.left())
                conn.send(core.hello(user))
                # only once the server's key is checked, and not for another account: a root
                # server hands that session to a worker after the hello (server/privsep.py)
                if request is not None and not user:
                    conn.request = request(core)
                    conn.send(conn.request)
                conn.flush()
                answer, *early = conn.next_events(deadline)
        except REFUSALS as exc:
            error = core.refused(exc, context is not None, _own_fingerprint(cert),
                                 os.path.basename(cert) == SIGNED_CERT)
            if error is exc:
                raise
            raise error from exc
        core.answer(answer, context is not None)
        conn.early = [e for e in map(core.route, early) if e is not None]  # now welcomed
        sock.setblocking(False)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_shared(host: str, port: int, home: str | os.PathLike[str], *,
                   accept_new: bool = False, persist: float = 60.0, start: bool = True,
                   timeout: float = 10.0, user: str = "") -> BlockingClient:
    """A connection lent by this home's ``tether mux`` (started if none runs and ``start``),
    as the account ``user``: no TLS and no identity to load here, the mux already holds both.
    MuxUnavailable: connect directly."""
    from tether.client.mux import open_shared

    deadline = Deadline(host, port, timeout)  # the mux's own connecting is within it too
    sock, server_fp = open_shared(home, host, port, accept_new=accept_new, persist=persist,
                                  start=start, timeout=timeout, user=user)
    conn = BlockingClient(sock)
    try:
        core = conn.core
        core.server_fingerprint = server_fp
        deadline.phase = WELCOME
        with _in_time(deadline):
            sock.settimeout(deadline.left())
            conn.send(core.hello(user))
            conn.flush()
            core.answer(conn.next_events(deadline)[0], True)
        sock.setblocking(False)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _in_time(deadline: Deadline) -> Iterator[None]:
    """A socket timeout (translated already) is the deadline's: said as its error."""
    try:
        yield
    except ConnectionFailed as exc:
        if isinstance(exc.__cause__, TimeoutError):
            raise deadline.expired() from None
        raise


def _own_fingerprint(cert: str) -> str:
    """This client's fingerprint, for the refusal message (read only when refused)."""
    try:
        with open(cert) as fh:
            return fingerprint(ssl.PEM_cert_to_DER_cert(fh.read()))
    except (OSError, ValueError):
        return "(unreadable certificate)"
