"""The mux: one authenticated connection per host, shared by this user's local clients.

It listens on a Unix socket (mode 0600 in a 0700 directory; :func:`tether.client.mux.socket_path`)
and admits only peers of its own uid (SO_PEERCRED). A ``connect`` request names a host and an
account there; the mux reuses its connection for both or makes one (TLS 1.3, the home's
identity, the server pinned in the home's known_hosts or vouched for by a CA trusted for it, the
account asked for in its ``hello``, as any client does), answers the client's ``hello`` with
that server's ``welcome``, and then relays frames: a stream the client opens gets the next odd
id upstream (ids stay odd and increasing on both sides), frames are copied with the id
rewritten, and flow control stays end to end (``credit`` travels like any stream message).

Each client's side is checked by a protocol core of its own (:class:`Connection` in the
server's role, fed the client's bytes and given the server's frames to send), so every rule of
docs/PROTOCOL.md (stream tables, windows, values) holds per client: a client that breaks one
gets a stream-0 ``error`` and is dropped alone, where the server would have ended the shared
connection for everyone. That core answers the client's pings; the mux answers the server's
and pings a silent server. When a client goes away, its unfinished streams are abandoned
upstream (``close``), so the server kills their commands as it would on a disconnect. A
connection with no client for ``persist`` seconds is closed, and then the mux exits. It never
prints: ``tether mux`` reports for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.client import handshake
from tether.client.mux import MAX_LINE, MuxUnavailable, identity_fingerprint
from tether.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    TetherError,
)
from tether.home import SIGNED_CERT, check_host, fingerprint
from tether.net.translate import reaching, translate
from tether.protocol.connection import CLOSED, NEED_DATA, Connection, Event
from tether.protocol.decode import decode_message
from tether.protocol.forwarding import Connect
from tether.protocol.frames import (
    KIND_DATA,
    KIND_MSG,
    MAGIC,
    MAX_BODY,
    MAX_HEADER,
    PREFIX,
    encode_data_prefix,
    encode_msg,
    parse_header,
)
from tether.protocol.messages import (
    Data,
    Error,
    Hello,
    Message,
    Refused,
    Role,
    Welcome,
)

PEERCRED = struct.Struct("3i")  # pid, uid, gid
Key = tuple[str, int, str]  # host, port, account ("": the server's choice): one connection each
UPSTREAM_KEEPALIVE = 15.0  # seconds of server silence before a ping; 3 x that and it is gone
TICK = 1.0
READ_SIZE = 256 * 1024  # bytes read from a client at a time


@dataclass
class Frame:
    """One frame as read, kept as bytes for relaying; ``kind``/``stream`` from its prefix."""

    prefix: bytes
    rest: bytes
    kind: int
    stream: int

    def header(self) -> dict[str, Any]:
        hlen = PREFIX.unpack(self.prefix)[4]
        return parse_header(self.rest[:hlen]) if self.kind == KIND_MSG else {}

    @property
    def channel(self) -> int:
        return int(PREFIX.unpack(self.prefix)[2])


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next whole frame; its prefix is checked before the rest is read."""
    prefix = await reader.readexactly(PREFIX.size)
    magic, kind, channel, stream, hlen, blen = PREFIX.unpack(prefix)
    if magic != MAGIC or kind not in (KIND_MSG, KIND_DATA) or hlen > MAX_HEADER \
            or blen > MAX_BODY or (kind == KIND_DATA and (hlen or not blen or channel > 2)):
        raise RemoteProtocolError("not a valid tether frame")
    return Frame(prefix, await reader.readexactly(hlen + blen), kind, stream)


@dataclass(eq=False)
class Route:
    """One stream: the client's id on its link and the id upstream."""

    link: Link | None
    client_id: int
    upstream_id: int
    client_final: bool = False
    server_final: bool = False


@dataclass(eq=False)
class Link:
    """One local client connection (a ``tether run``, an Ansible worker, an API user), with
    the protocol core that holds it to the rules as the server would."""

    writer: asyncio.StreamWriter
    routes: dict[int, Route] = field(default_factory=dict)
    core: Connection = field(default_factory=lambda: Connection(Role.SERVER))

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def flush(self) -> None:
        """Write what the core sent by itself (pongs)."""
        out = self.core.data_to_send()
        if out:
            self.send(out)

    def relay(self, route: Route, frame: Frame, msg: Message | None) -> None:
        """Pass one of the server's frames on through the core: renumbered for this client
        (``msg`` already is), and checked against its stream's state."""
        try:
            if msg is None:
                self.send(self.core.data_prefix(route.client_id, frame.channel, len(frame.rest)))
                self.send(frame.rest)
            else:
                self.send(self.core.send(msg))
        except TetherError as exc:  # the server's frame does not fit this client's stream
            self.fail(f"the mux could not relay the server's frame: {exc}")

    def fail(self, reason: str) -> None:
        """End this client with a stream-0 error (it may act on it); its streams are abandoned
        when its relay ends."""
        with contextlib.suppress(TetherError):
            self.send(self.core.send(Error(code=RemoteProtocolError.code, message=reason)))
        self.writer.close()

    async def next_event(self, reader: asyncio.StreamReader) -> Event:
        """The client's next checked event (CLOSED when it went away); pongs are written."""
        while True:
            event = self.core.next_event()
            if event is not NEED_DATA:
                return event
            self.flush()
            self.core.receive_data(await reader.read(READ_SIZE))


class Upstream:
    """One authenticated connection to a server, shared by links."""

    def __init__(self, key: Key, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, welcome: Welcome, server_fp: str) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.welcome = welcome
        self.fingerprint = server_fp
        self.routes: dict[int, Route] = {}
        self.links: set[Link] = set()
        self.next_id = 1
        self.idle_since = time.monotonic()
        self.heard = time.monotonic()
        self.pinged = 0.0
        self.keepalive = UPSTREAM_KEEPALIVE
        self.draining = False
        self.closed = False
        self.task: asyncio.Future[None] | None = None

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.writer.write(data)

    def open_route(self, link: Link, client_id: int) -> Route:
        route = Route(link, client_id, self.next_id)
        self.next_id += 2
        self.routes[route.upstream_id] = route
        link.routes[client_id] = route
        return route

    def retire(self, route: Route) -> None:
        self.routes.pop(route.upstream_id, None)
        if route.link is not None:
            route.link.routes.pop(route.client_id, None)

    async def pump(self) -> None:
        """Relay the server's frames to their links until the connection ends."""
        reason = "the server closed the connection"
        try:
            while True:
                frame = await read_frame(self.reader)
                self.heard = time.monotonic()
                if frame.stream == 0:
                    if not self._connection_frame(frame):
                        reason = "the server ended the connection"
                        for link in list(self.links):
                            link.send(frame.prefix + frame.rest)  # its stream-0 error, as is
                        break
                    continue
                route = self.routes.get(frame.stream)
                if route is None:
                    continue  # in flight after the stream was abandoned
                msg = None if frame.kind == KIND_DATA else \
                    decode_message(frame.header(), route.client_id)
                if route.link is not None:
                    route.link.relay(route, frame, msg)
                if msg is not None and msg.FINAL:
                    route.server_final = True
                    if route.client_final or route.link is None:
                        self.retire(route)
        except (asyncio.IncompleteReadError, OSError, TetherError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                reason = str(translate(exc)) if isinstance(exc, OSError) else str(exc)
        finally:
            self.shut(reason)

    def _connection_frame(self, frame: Frame) -> bool:
        """Handle a stream-0 frame; False when it ends the connection (an ``error``)."""
        header = frame.header()
        kind = header.get("t")
        if kind == "ping":
            self.send(encode_msg(0, {"t": "pong", "token": header.get("token", 0)}))
        return kind != "error"

    def shut(self, reason: str) -> None:
        """Close this connection; every link on it gets a stream-0 error and is closed."""
        if self.closed:
            return
        self.closed = True
        error = encode_msg(0, {"t": "error", "code": "connection", "message": reason})
        for link in list(self.links):
            link.send(error)
            link.writer.close()
        self.links.clear()
        self.routes.clear()
        self.writer.close()

    def tick(self, now: float) -> None:
        """Ping a silent server; give it up after three silent intervals."""
        silent = now - self.heard
        if silent >= 3 * self.keepalive:
            self.shut(f"no answer from the server for {3 * self.keepalive:g} s")
        elif silent >= self.keepalive and now - self.pinged >= self.keepalive:
            self.pinged = now
            self.send(encode_msg(0, {"t": "ping", "token": int(now) & 0x7FFFFFFF}))


class Mux:
    """The listener, its upstream connections, and the idle clock."""

    def __init__(self, home: Path, path: str, persist: float) -> None:
        self.home = home
        self.path = path
        self.persist = persist
        self.identity = identity_fingerprint(home)
        self.upstreams: dict[Key, Upstream] = {}
        self.links: set[Link] = set()
        self.locks: dict[Key, asyncio.Lock] = {}
        self.idle_since = time.monotonic()
        self.stopping = asyncio.Event()
        self.started = time.time()
        self._ctx: Any = None

    # --- serving -------------------------------------------------------------------------------

    async def serve(self, sock: socket.socket) -> None:
        inode = os.stat(self.path).st_ino  # the path bound for us (a successor may rebind it)
        server = await asyncio.start_unix_server(self._accept, sock=sock, limit=MAX_LINE)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        ticker = asyncio.ensure_future(self._tick())
        try:
            await self.stopping.wait()
        finally:
            ticker.cancel()
            server.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == inode:  # ours, not a successor's
                    os.unlink(self.path)
            for up in list(self.upstreams.values()):
                up.shut("the mux stopped")
            for link in list(self.links):
                link.writer.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for key, up in list(self.upstreams.items()):
                up.tick(now)
                if not up.closed and not up.links and not up.routes \
                        and now - up.idle_since >= self.persist:
                    up.shut("idle")
                if up.closed:
                    self.upstreams.pop(key, None)
            if not self.upstreams and not self.links and now - self.idle_since >= self.persist:
                self.stopping.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            _, uid, _ = PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        PEERCRED.size))
            if uid != os.getuid():
                return  # only the owning user: closed without a word
            line = await asyncio.wait_for(reader.readline(), 10.0)
            request = json.loads(line)
            if not isinstance(request, dict):
                return
            await self._dispatch(request, reader, writer)
        except (TimeoutError, OSError, ValueError, TetherError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass  # this client broke the rules or went away: only it is dropped
        finally:
            writer.close()

    async def _dispatch(self, request: dict[str, Any], reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        op = request.get("op")
        if op == "connect":
            await self._connect(request, reader, writer)
        elif op == "status":
            _reply(writer, {"ok": True, **self.status()})
        elif op == "stop":
            _reply(writer, {"ok": True})
            self.stopping.set()
        elif op == "forget":  # every account's connection to that host and port
            where = (str(request.get("host")), int(request.get("port", 0)))
            gone = [self.upstreams.pop(key) for key in list(self.upstreams)
                    if key[:2] == where]
            for up in gone:
                up.draining = True
                if not up.links:
                    up.shut("forgotten")
            _reply(writer, {"ok": True, "forgotten": bool(gone)})
        else:
            _reply(writer, {"ok": False, "code": "bad_request", "message": f"unknown op {op!r}"})
        await writer.drain()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "pid": os.getpid(), "home": str(self.home), "socket": self.path,
            "persist": self.persist, "uptime": round(time.time() - self.started, 1),
            "identity": self.identity, "clients": len(self.links),
            "connections": [
                {"host": host, "port": port, "user": user, "fingerprint": up.fingerprint,
                 "clients": len(up.links), "streams": len(up.routes),
                 "idle": round(now - up.idle_since, 1) if not up.links else 0.0}
                for (host, port, user), up in self.upstreams.items()
            ],
        }

    # --- a client's shared connection ----------------------------------------------------------

    async def _connect(self, request: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        if request.get("home") != str(self.home) or request.get("identity") != self.identity:
            _reply(writer, {"ok": False, "code": MuxUnavailable.code,
                            "message": "this mux serves another tether home or identity"})
            return
        key = (str(request.get("host")), int(request.get("port", 0)),
               str(request.get("user") or ""))
        try:
            up = await self._upstream(key, bool(request.get("accept_new")),
                                      float(request.get("keepalive") or 0))
        except TetherError as exc:
            _reply(writer, {"ok": False, "code": exc.code, "message": str(exc)})
            return
        _reply(writer, {"ok": True, "fingerprint": up.fingerprint})
        link = Link(writer)
        self.links.add(link)
        up.links.add(link)
        try:
            await self._relay(up, link, reader)
        finally:
            self._unlink(up, link)

    async def _upstream(self, key: Key, accept_new: bool,
                        keepalive: float) -> Upstream:
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            up = self.upstreams.get(key)
            if up is None or up.closed:
                up = await self._dial(key, accept_new)
                self.upstreams[key] = up
                up.task = asyncio.ensure_future(up.pump())
            if keepalive:
                up.keepalive = min(up.keepalive, keepalive)
            return up

    async def _dial(self, key: Key, accept_new: bool) -> Upstream:
        """Connect and authenticate as any client does (tether.client.api._open)."""
        import ssl

        from tether.hosttrust import check_host_certificate, client_context, refused_in_handshake
        from tether.identity import load_identity
        from tether.tls import HOST_CERT_SNI

        host, port, user = key
        identity = load_identity(self.home)
        ctx, by_ca = client_context(self.home, host, port, identity.cert_path, identity.key_path)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, limit=MAX_BODY,
                                        server_hostname=HOST_CERT_SNI if by_ca else "tether"),
                10.0)
        except ssl.SSLCertVerificationError as exc:
            raise refused_in_handshake(host, port, exc) from exc
        except (TimeoutError, OSError) as exc:
            raise reaching(exc, host, port) from exc
        try:
            sslobj = writer.get_extra_info("ssl_object")
            server_fp = fingerprint(sslobj.getpeercert(binary_form=True) or b"")
            if by_ca:
                check_host_certificate(host, port, sslobj.getpeercert())
            else:
                check_host(self.home, host, port, server_fp, accept_new, None)
            writer.write(encode_msg(0, handshake.hello(user).to_header()))
            try:
                frame = await asyncio.wait_for(read_frame(reader), 10.0)
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise handshake.refused(self.identity, identity.cert_path.name
                                        == SIGNED_CERT) from exc
            if frame.stream != 0 or frame.kind != KIND_MSG:
                raise RemoteProtocolError("expected welcome")
            welcome = handshake.welcome_of(decode_message(frame.header(), 0), True, user)
        except BaseException:
            writer.close()
            raise
        return Upstream(key, reader, writer, welcome, server_fp)

    async def _relay(self, up: Upstream, link: Link, reader: asyncio.StreamReader) -> None:
        """Answer the client's hello, then pass its checked messages upstream until it goes
        away or breaks a rule (then it alone gets a stream-0 error)."""
        try:
            hello = await asyncio.wait_for(link.next_event(reader), 10.0)
            if not isinstance(hello, Hello):
                return
            if hello.user != up.key[2]:  # the welcome says which account: the one connected
                link.fail("the hello asks for another account than the connect request")
                return
            link.send(link.core.send(up.welcome))
            while not up.closed:
                event = await link.next_event(reader)
                if event is CLOSED or not self._forward(up, link, event):
                    return
                await up.writer.drain()
        except (RemoteProtocolError, LocalProtocolError) as exc:
            link.fail(str(exc))

    @staticmethod
    def _forward(up: Upstream, link: Link, event: Event) -> bool:
        """Send one of the client's events upstream; False when it ends the client (a
        stream-0 message: its fatal ``error``)."""
        if isinstance(event, Data):
            route = link.routes[event.stream]
            up.send(encode_data_prefix(route.upstream_id, event.channel, len(event.data)))
            up.send(event.data)
            return True
        msg = event.request if isinstance(event, Refused) else event  # the server refuses it
        if not isinstance(msg, Message) or msg.stream == 0:
            return False
        route = up.open_route(link, msg.stream) if msg.OPENS else link.routes[msg.stream]
        header = msg.to_header()
        if isinstance(msg, Connect) and msg.listener:  # a stream id inside a message: renumbered
            listener = link.routes.get(msg.listener)
            header["listener"] = listener.upstream_id if listener is not None else 0
        up.send(encode_msg(route.upstream_id, header))
        if msg.FINAL:
            route.client_final = True
            if route.server_final:
                up.retire(route)
        return True

    def _unlink(self, up: Upstream, link: Link) -> None:
        """The client left: abandon its unfinished streams (the server kills their commands)."""
        self.links.discard(link)
        up.links.discard(link)
        for route in list(link.routes.values()):
            route.link = None
            if not route.client_final:
                up.send(encode_msg(route.upstream_id, {"t": "close"}))
                route.client_final = True
            if route.server_final:
                up.retire(route)
        link.routes.clear()
        now = time.monotonic()
        if not up.links:
            up.idle_since = now
            if up.draining:
                up.shut("forgotten")
        if not self.links:
            self.idle_since = now


def _reply(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")


def run(home: Path, sock: socket.socket, path: str, persist: float) -> None:
    """Serve on a bound, listening socket until stopped or idle."""
    asyncio.run(Mux(home, path, persist).serve(sock))


__all__ = ["Mux", "run"]
