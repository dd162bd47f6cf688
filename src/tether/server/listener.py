"""The listener: TLS setup, accepting connections, and an orderly shutdown.

For every accepted connection :meth:`Server._tls_context` checks the authorized file's identity
(device, inode, ctime, mtime and size: the kernel sets the ctime on every change, so a same-size
rewrite with a kept mtime, as ``cp -p`` or a configuration manager makes, is seen too) and
rebuilds the TLS context (whose trust store is exactly the authorized certificates) when it
changed, so ``tether authorize`` takes effect for the next connection without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from tether.errors import TetherError
from tether.home import signed_cert_file
from tether.identity import AuthorizedClient, Identity, authorized_path, read_authorized
from tether.net.framed import FramedProtocol
from tether.protocol import Role
from tether.protocol.discovery import Announcement
from tether.server.audit import AuditLog
from tether.server.buffers import ByteBudget
from tether.server.classic import ClassicServer
from tether.server.config import ClassicConfig, ServerConfig, is_loopback
from tether.server.context import SessionContext
from tether.server.descriptors import Descriptors
from tether.server.discovery import DiscoveryResponder, start_discovery
from tether.server.diskpool import DiskPool
from tether.server.limits import Admission, derive, raise_descriptor_limit
from tether.server.privsep import SharedCounts
from tether.server.refusals import Refusals
from tether.server.rotation import KeyRotation
from tether.server.session import Session
from tether.server.shares import Shares
from tether.server.trust import Trust
from tether.storage.hashcache import cache_dir
from tether.storage.reserved import Reserved
from tether.tls import server_context
from tether.version import __version__

if TYPE_CHECKING:
    from tether.server.metrics import MetricsServer

__all__ = ["Server", "ServerConfig", "is_loopback"]  # the config types live in server/config

log = logging.getLogger("tether.server")


def _handshake_failure(exc: BaseException) -> str:
    """A one-line reason for a failed TLS handshake, naming the usual causes."""
    text = str(exc).upper()
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in (2, 20, 21):
        return "TLS handshake failed: client certificate signed by a CA this server does not trust"
    if "CERTIFICATE" in text or "UNKNOWN_CA" in text or "PEER DID NOT RETURN" in text:
        return "TLS handshake failed: client identity not authorized"
    if "WRONG_VERSION" in text or "UNSUPPORTED_PROTOCOL" in text or "HTTP_REQUEST" in text:
        return "TLS handshake failed: not a TLS 1.3 client"
    return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc.__class__.__name__}"


def _keepalive(transport: asyncio.Transport) -> None:
    """TCP keepalive, so a peer that vanished without a FIN is noticed in about two minutes."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


def _stamp(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced or edited (a same-size swap with a kept mtime too)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0, 0, 0)
    return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)


class _Accepted(asyncio.Protocol):
    """The first protocol of every connection: stops reading at once, hands over to the server."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self.server._accept(transport))
        self.server._accepting.add(task)
        task.add_done_callback(self.server._accepting.discard)


class Server:
    def __init__(self, config: ServerConfig, identity: Identity | None) -> None:
        if config.plaintext and not is_loopback(config.host):
            raise TetherError(
                f"--plaintext is only allowed on a loopback address, not {config.host}"
            )
        if not config.plaintext and identity is None:
            raise TetherError("a TLS server needs an identity")
        self._limits_note = raise_descriptor_limit()
        derived = derive(config.limits)
        self._limits_note += "; " + derived.note
        config = dataclasses.replace(config, limits=derived.limits)
        self.descriptors = Descriptors(derived.operation_descriptors,
                                       derived.limits.max_descriptors_per_client)
        self.config = config
        self.identity = identity
        self._handshaking: dict[asyncio.Transport, str] = {}  # oldest first
        self.sessions: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._stamp: tuple[int, ...] | None = None
        self._clients: dict[str, AuthorizedClient] = {}
        self._ctx: ssl.SSLContext | None = None
        self._stopped = asyncio.Event()
        self.admission = Admission(config.limits)
        self._accepting: set[asyncio.Task[None]] = set()
        self.audit = AuditLog(config.audit)
        self.disk = DiskPool(config.limits.disk_threads, config.limits.disk_threads_per_client)
        self.refusals = Refusals(self.audit, config.limits.refusal_log_interval)
        self.reserved = Reserved([config.home], [config.audit] if config.audit else [])
        self.classic: ClassicServer | None = None
        self.discovery: DiscoveryResponder | None = None
        self.metrics: MetricsServer | None = None
        self.rotation = KeyRotation(config.home, identity)
        self.trust = Trust(config.home, config.trust_cas, config.crl)
        self.context = SessionContext(
            limits=config.limits, root=config.root, plaintext=config.plaintext,
            name=config.name, encoding=config.encoding, kill_grace=config.kill_grace,
            admission=self.admission, audit=self.audit, authorized=self.authorized,
            trust=self.trust, counts=SharedCounts(), next_key=self.rotation.announced,
            drain=config.drain,
            reserved=self.reserved, refusals=self.refusals, disk=self.disk,
            descriptors=self.descriptors,
            fetches=Shares(config.limits.max_fetches_per_client),
            forwarding=config.forwarding,
            buffers=ByteBudget(config.limits.max_buffered_per_client),
            pass_env=config.pass_env, hash_cache=cache_dir(config.home),
        )

    # --- authorization -------------------------------------------------------------------------

    def authorized(self) -> dict[str, AuthorizedClient]:
        """The authorized clients, re-read when the file changed (or the host certificate)."""
        stamp = _stamp(authorized_path(self.config.home)) + _stamp(self._host_cert())
        if stamp != self._stamp:
            found = read_authorized(self.config.home)
            for problem in found.problems:  # admit the valid entries, never a stale list
                log.error("skipped in the authorized list: %s", problem)
            self._clients = found.clients
            self._stamp = stamp
            self._ctx = None
        return self._clients

    def reload_trust(self) -> None:
        """SIGHUP: read the authorized list, the trusted CAs, the revocation list, the
        principals and the server identity again for the next connection (connections already
        up keep what they were admitted with). A CA or list that no longer loads is logged and
        the one in use kept."""
        self._stamp = None
        try:
            trust = Trust(self.config.home, self.config.trust_cas, self.config.crl)
        except (TetherError, OSError, ValueError) as exc:
            log.error("reload: keeping the trusted CAs and revocation list in use: %s", exc)
        else:
            self.trust = trust
            self.context = dataclasses.replace(self.context, trust=trust)
        if self.rotation.refresh(force=True):
            self._new_identity()
        self._ctx = None
        self.authorized()

    def _new_identity(self) -> None:
        """The server key changed (a rotation ended): TLS and discovery use the new one."""
        self.identity = self.rotation.identity
        self._ctx = None
        if self.discovery is not None and self.identity is not None:
            self.discovery.announcement = dataclasses.replace(
                self.discovery.announcement, fingerprint=self.identity.fingerprint)

    def _host_cert(self) -> Path:
        return Path(signed_cert_file(self.config.home, "server"))

    def _tls_context(self) -> ssl.SSLContext:
        if self.rotation.refresh():  # a key rotation's overlap ended: the new key from now on
            self._new_identity()
        clients = self.authorized()
        if self._ctx is None:
            assert self.identity is not None
            anchors = [c.cert_der for c in clients.values()] + self.trust.anchors
            host_cert = self._host_cert()
            self._ctx = server_context(self.identity, anchors,
                                       host_cert if host_cert.exists() else None)
        return self._ctx

    # --- lifetime ------------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on ``host:port``, or on ``sock`` (a socket systemd passed us)."""
        log.info("limits: %s", self._limits_note)
        loop = asyncio.get_running_loop()
        # asyncio accepts up to this many per wake-up before admission runs: within the
        # descriptors kept in reserve, so a burst cannot reach RLIMIT_NOFILE (EMFILE)
        backlog = max(16, min(1024, self.config.limits.reserved_descriptors))
        if sock is not None:
            self._server = await loop.create_server(lambda: _Accepted(self), sock=sock,
                                                    backlog=backlog)
            self.config.host = sock.getsockname()[0]
        else:
            self._server = await loop.create_server(
                lambda: _Accepted(self), self.config.host, self.config.port, backlog=backlog)
        self.config.port = self._server.sockets[0].getsockname()[1]
        if self.config.metrics is not None:
            from tether.server.metrics import MetricsServer

            self.metrics = MetricsServer(self.admission, self.authorized, self.audit,
                                         *self.config.metrics, counts=self.context.counts)
        if self.config.classic is not None:
            await self._start_classic(self.config.classic)
        if self.config.discoverable:
            await self._start_discovery()

    async def _start_classic(self, config: ClassicConfig) -> None:
        c = self.config
        self.classic = ClassicServer(config, c.root, c.encoding, c.kill_grace, audit=self.audit,
                                     limits=c.limits, reserved=self.reserved,
                                     pass_env=c.pass_env)
        try:
            await self.classic.start()
        except BaseException:
            assert self._server is not None
            self._server.close()
            raise

    async def _start_discovery(self) -> None:
        """The UDP responder on the TLS port's number; if it cannot bind, nothing stays up."""
        c = self.config
        fp = self.identity.fingerprint if self.identity is not None else ""
        try:
            self.discovery = await start_discovery(
                c.host, c.port, Announcement(c.host, c.port, c.name, fp, __version__))
        except BaseException:
            await self._close()
            raise

    @property
    def port(self) -> int:
        return self.config.port

    async def _accept(self, transport: asyncio.Transport) -> None:
        """Admit, then secure, then serve one connection; nothing is read before TLS is up."""
        peer = transport.get_extra_info("peername")
        address = peer[0] if peer else "?"
        _keepalive(transport)
        refusal = self.admission.admit_address(address)
        if refusal is not None:
            self.refusals.refused(address, refusal)
            transport.abort()
            return
        self._make_room(address)
        self._handshaking[transport] = address
        try:
            try:
                link = await self._secure(transport, address)
            finally:
                self._handshaking.pop(transport, None)
            if link is None:
                return
            session = Session(self.context, link)
            self.sessions.add(session)
            try:
                await session.serve()
            except Exception:  # a bug in one session must never take the listener down
                log.exception("session failed")
            finally:
                self.sessions.discard(session)
        finally:
            self.admission.connection_closed()

    def _make_room(self, address: str) -> None:
        """All handshake slots are taken: drop the oldest waiting handshake, so connections
        that never finish theirs cannot keep a real client out (and say so, aggregated)."""
        while len(self._handshaking) >= self.admission.max_handshakes:
            oldest, who = next(iter(self._handshaking.items()))
            del self._handshaking[oldest]
            oldest.abort()
            self.refusals.refused(who, f"handshake slots full ({self.admission.max_handshakes}):"
                                       f" the oldest waiting handshake was dropped")

    async def _secure(self, transport: asyncio.Transport, address: str) -> FramedProtocol | None:
        """The TLS handshake (skipped with --plaintext), under its deadline, counted per address."""
        loop = asyncio.get_running_loop()
        protocol = FramedProtocol(Role.SERVER)
        ok = False
        try:
            if self.config.plaintext:
                secured: asyncio.BaseTransport = transport
                transport.set_protocol(protocol)
                transport.resume_reading()
            else:
                tls = await loop.start_tls(
                    transport, protocol, self._tls_context(), server_side=True,
                    ssl_handshake_timeout=self.config.limits.handshake_timeout,
                )
                if tls is None:  # dropped for a newer handshake (_make_room) meanwhile
                    raise ConnectionAbortedError("handshake dropped: slots full")
                secured = tls
            protocol.connection_made(secured)
            ok = True
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            reason = _handshake_failure(exc)
            self.refusals.refused(address, reason)
            transport.close()  # close, not abort: let a TLS alert already queued go out
            return None
        finally:
            self.admission.handshake_ended(address, ok)
        return protocol

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopped.set)
        await self._stopped.wait()
        await self.close()

    def stop(self) -> None:
        self._stopped.set()

    def stop_accepting(self) -> None:
        """No new connections (on any listener), and no discovery answers inviting them;
        those already up carry on."""
        if self._server is not None:
            self._server.close()
        if self.classic is not None:
            self.classic.stop_accepting()
        if self.discovery is not None:
            self.discovery.close()

    async def close(self) -> None:
        await self._close()
        self.refusals.flush()
        self.disk.close()
        if self.metrics is not None:
            self.metrics.close()
        self.audit.close()

    async def _close(self) -> None:
        if self.discovery is not None:
            self.discovery.close()
        if self.classic is not None:
            await self.classic.close()
        if self._server is not None:
            self._server.close()
        sessions = list(self.sessions)
        await asyncio.gather(*(s.shutdown() for s in sessions), return_exceptions=True)
        # give the commands' kill tasks their grace period, so no process group outlives us
        pending = [t for s in sessions for t in s.tasks]
        if pending:
            await asyncio.wait(pending, timeout=self.config.kill_grace + 2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
