"""One client connection on the server: handshake, authorization, and dispatch of its frames.

A session sees the server only through a :class:`SessionContext` (its limits and settings,
admission, the audit log and the authorized lookup), so it never imports the listener.
Dispatch is an explicit table from message class to handler (:data:`Session.HANDLERS`); a
peer-supplied name never reaches getattr. A protocol violation ends this connection with an error
frame; nothing here can stop the listener or disturb other sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from tether import __version__
from tether.errors import (
    BadRequest,
    Busy,
    ConnectionFailed,
    NotAuthorized,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    ServerShuttingDown,
    TetherError,
    VersionMismatch,
)
from tether.identity import PERMISSIONS, AuthorizedClient, fingerprint
from tether.net.framed import FramedConnection, FramedProtocol
from tether.protocol import (
    PROTOCOL_VERSIONS,
    Batch,
    Begin,
    Close,
    Commit,
    Data,
    Done,
    Eof,
    Error,
    Exec,
    Fetch,
    Get,
    Hello,
    List,
    Message,
    Put,
    Refused,
    Resize,
    Shell,
    Signal,
    Welcome,
)
from tether.protocol.messages import (
    Sync,
    SyncBatch,
    SyncCommit,
    SyncFile,
    SyncList,
    SyncListed,
    SyncSent,
    SyncWant,
)
from tether.server.audit import AuditLog
from tether.server.batch import FETCHES_AT_ONCE, BatchPut, send_batch
from tether.server.exec import CommandRun, ExecPolicy, exec_spec
from tether.server.limits import Admission, Limits
from tether.server.shell import LineRun, PtyRun, shell_spec
from tether.server.sync import SyncStream, receive, send
from tether.server.transfer import PutTransfer, send_file, send_listing
from tether.storage.area import FileArea
from tether.storage.errors import disk_error

log = logging.getLogger("tether.server")


@dataclass(frozen=True)
class SessionContext:
    """What a session needs of its server, and nothing more."""

    limits: Limits
    root: Path  # where an unconfined client's relative paths and commands start
    plaintext: bool
    name: str  # the server's name, told in welcome
    encoding: str
    kill_grace: float
    admission: Admission
    audit: AuditLog
    authorized: Callable[[], dict[str, AuthorizedClient]]  # re-read when the file changed


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, as established by TLS and the authorized list."""

    fingerprint: str
    name: str
    root: Path
    permissions: frozenset[str]
    confined: bool = False


class Session:
    def __init__(self, context: SessionContext, link: FramedProtocol) -> None:
        self.context = context
        self.conn = FramedConnection(link)
        self.peer: Peer | None = None
        self.streams: dict[int, StreamHandler] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetch_slots = asyncio.Semaphore(FETCHES_AT_ONCE)

    async def serve(self) -> None:
        address = self.conn.peer_address
        audit = self.context.audit
        admitted, reason = False, ""
        try:
            self.peer = self._authorize()
            refusal = self.context.admission.admit_client(self.peer.fingerprint)
            if refusal is not None:
                raise Busy(refusal)
            admitted = True
            await asyncio.wait_for(self._handshake(), self.limits.handshake_timeout)
            log.info("connected %s %s (%s)", address, self.peer.name, self.peer.fingerprint)
            audit.event("connection", address=address, fingerprint=self.peer.fingerprint,
                        name=self.peer.name)
            self.conn.frame_timeout = self.limits.frame_timeout or None
            self.conn.idle_timeout = self.limits.idle_timeout or None
            self.conn.keepalive = self.limits.keepalive if self.limits.keepalive > 0 else None
            await self._dispatch_loop()
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s", address, exc)
            audit.event("protocol_error", address=address, reason=str(exc))
            await self.conn.fail(exc)
        except (NotAuthorized, VersionMismatch, Busy) as exc:
            log.warning("refused %s: %s", address, exc)
            audit.event("refused", address=address, reason=str(exc))
            await self.conn.fail(exc)
        except TimeoutError:
            log.warning("refused %s: no hello within the handshake timeout", address)
            audit.event("refused", address=address, reason="no hello in time")
            await self.conn.fail(ConnectionFailed("handshake timed out"))
        except ConnectionFailed as exc:
            log.info("disconnected %s: %s", address, exc)
            reason = str(exc)
        finally:
            self._abandon_all()
            await self.conn.close()
            if admitted and self.peer is not None:
                self.context.admission.client_left(self.peer.fingerprint)
                audit.event("disconnection", address=address, fingerprint=self.peer.fingerprint,
                            **({"reason": reason} if reason else {}))

    @property
    def limits(self) -> Limits:
        return self.context.limits

    async def shutdown(self) -> None:
        """The server is stopping: tell the client, kill its commands."""
        self._abandon_all()
        await self.conn.fail(ServerShuttingDown("server shutting down"))

    def _authorize(self) -> Peer:
        context = self.context
        if context.plaintext:
            return Peer("plaintext", "plaintext", context.root, frozenset(PERMISSIONS))
        cert = self.conn.peer_cert
        if not cert:
            raise NotAuthorized("no client certificate")
        fp = fingerprint(cert)
        client: AuthorizedClient | None = context.authorized().get(fp)
        if client is None:
            raise NotAuthorized(f"client identity {fp} is not authorized")
        root = Path(client.root) if client.root else context.root
        return Peer(fp, client.name, root, client.permissions, confined=client.root is not None)

    async def _handshake(self) -> None:
        assert self.peer is not None
        hello = await self.conn.next_event()
        if not isinstance(hello, Hello):
            raise RemoteProtocolError("the first frame must be hello")
        common = set(hello.versions) & set(PROTOCOL_VERSIONS)
        if not common:
            raise VersionMismatch(
                f"client offered protocol versions {hello.versions[:8]}, "
                f"server speaks {list(PROTOCOL_VERSIONS)}"
            )
        self.conn.send(
            Welcome(
                version=max(common),
                software=f"tether/{__version__}",
                server_name=self.context.name,
                platform=platform.system().lower(),
                encoding=self.context.encoding,
                client_fingerprint=self.peer.fingerprint,
                client_name=self.peer.name,
                permissions=sorted(self.peer.permissions),
            )
        )
        await self.conn.drain()

    async def _dispatch_loop(self) -> None:
        while True:
            event = await self.conn.next_event()
            handler = self.HANDLERS.get(type(event))
            if handler is None:
                raise RemoteProtocolError(f"a client may not send {type(event).__name__}")
            if isinstance(event, Message) and event.OPENS and not _encodable(event):
                # JSON can carry a lone surrogate ("\ud800"); no path, name or argv can
                self._end_stream(event.stream, BadRequest(
                    f"{event.TYPE}: text that is not valid Unicode (a lone surrogate)"))
                continue
            await handler(self, event)

    # --- opening streams -----------------------------------------------------------------------

    def _check_open(self, permission: str) -> Peer:
        assert self.peer is not None
        if permission not in self.peer.permissions:
            raise PermissionDenied(f"this client may not {_VERBS[permission]}")
        if len(self.streams) >= self.limits.max_streams_per_connection:
            raise BadRequest("too many operations at once on one connection "
                             f"(limit {self.limits.max_streams_per_connection})")
        return self.peer

    def _area(self, peer: Peer) -> FileArea:
        return FileArea(peer.root, peer.confined)

    def _policy(self, peer: Peer) -> ExecPolicy:
        lim = self.limits
        return ExecPolicy(peer.root, self.context.kill_grace, lim.process_nproc,
                          lim.process_memory, peer.confined)

    async def _on_exec(self, msg: Exec) -> None:
        def make(policy: ExecPolicy) -> CommandRun:
            return CommandRun(self.conn, msg.stream, exec_spec(msg, policy), policy)

        await self._start_process(msg.stream, "exec", make, {"argv": msg.argv, "cwd": msg.cwd})

    async def _on_shell(self, msg: Shell) -> None:
        def make(policy: ExecPolicy) -> CommandRun:
            if msg.pty:
                spec = shell_spec(msg, policy, line_mode=False)
                return PtyRun(self.conn, msg.stream, spec, policy, msg.rows, msg.cols)
            return LineRun(self.conn, msg.stream, shell_spec(msg, policy, line_mode=True),
                           policy)

        await self._start_process(msg.stream, "shell", make,
                                  {"argv": msg.argv, "pty": msg.pty})

    async def _start_process(self, stream: int, permission: str,
                             make: Callable[[ExecPolicy], CommandRun],
                             what: dict[str, Any]) -> None:
        """Check, count, start and audit a command or shell; its errors end only its stream."""
        try:
            peer = self._check_open(permission)
            run = make(self._policy(peer))
            refusal = self.context.admission.admit_process(peer.fingerprint)
            if refusal is not None:
                raise Busy(refusal)
        except RemoteError as exc:
            self._end_stream(stream, exc)
            return
        try:
            await run.start()
        except RemoteError as exc:
            self.context.admission.process_ended(peer.fingerprint)
            self._end_stream(stream, exc)
            self.context.audit.event("command", fingerprint=peer.fingerprint, **what,
                                    outcome=str(exc))
            return
        self.streams[stream] = run
        log.info("%s %s stream %d pid %s: %r", permission, peer.name, stream,
                 run.proc.pid if run.proc else "?", what.get("argv"))
        self._spawn(self._until_done(stream, self._process(run, peer, permission, what)))

    async def _process(self, run: CommandRun, peer: Peer, kind: str,
                       what: dict[str, Any]) -> None:
        try:
            await run.run()
        finally:
            self.context.admission.process_ended(peer.fingerprint)
            code = run.proc.returncode if run.proc else None
            self.context.audit.event(
                "command" if kind == "exec" else "shell", fingerprint=peer.fingerprint,
                name=peer.name, **what, status=code if code is None or code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                timed_out=run.timed_out, duration=round(run.duration, 6),
            )

    async def _on_put(self, msg: Put) -> None:
        try:
            put = PutTransfer(self.conn, msg.stream, msg, self._area(self._check_open("put")),
                              self.limits.max_upload, lambda done: self._audit("put", done))
            await put.start()
        except (RemoteError, OSError) as exc:
            self._end_stream(msg.stream, _as_remote(exc))
            return
        if put.partial is not None:
            self.streams[msg.stream] = put

    async def _on_batch(self, msg: Batch) -> None:
        try:
            batch = BatchPut(self.conn, msg.stream, msg, self._area(self._check_open("put")),
                             self.limits.max_upload,
                             lambda path, size, hash_: self._audit_file("put", path, size, hash_))
            self.streams[msg.stream] = batch
            batch.start()
        except (RemoteError, OSError) as exc:
            self._end_stream(msg.stream, _as_remote(exc))

    async def _on_fetch(self, msg: Fetch) -> None:
        def on_file(path: str, size: int, hash_: str) -> None:
            self._audit_file("get", path, size, hash_)

        self._start_task(msg.stream, "get", "fetch",
                         lambda area: send_batch(self.conn, msg.stream, msg, area, on_file,
                                                 self.fetch_slots))

    async def _on_get(self, msg: Get) -> None:
        self._start_task(msg.stream, "get", "get",
                         lambda area: send_file(self.conn, msg.stream, msg, area))

    async def _on_list(self, msg: List) -> None:
        self._start_task(msg.stream, "get", "list",
                         lambda area: send_listing(self.conn, msg.stream, msg, area))

    async def _on_sync(self, msg: Sync) -> None:
        """A push needs permission put, a pull get; each runs as a task reading the stream's
        events from a bounded queue."""
        try:
            area = self._area(self._check_open("put" if msg.push else "get"))
        except RemoteError as exc:
            self._end_stream(msg.stream, exc)
            return
        handler = SyncStream(self.conn, msg.stream)
        self.streams[msg.stream] = handler
        body = receive(handler, msg, area) if msg.push else send(handler, msg, area)
        handler.task = self._spawn(self._until_done(msg.stream, body))
        self.context.audit.event("sync", fingerprint=self.peer.fingerprint if self.peer else None,
                                 push=msg.push, path=msg.path, sources=msg.sources[:16],
                                 delete=msg.delete, dry_run=msg.dry_run)

    def _audit(self, op: str, done: Done) -> None:
        self._audit_file(op, done.path, done.size, done.hash, done.resumed_from)

    def _audit_file(self, op: str, path: str, size: int, hash_: str,
                    resumed_from: int = 0) -> None:
        assert self.peer is not None
        if self.context.audit.path is None:
            return  # no audit log: a batch's files cost nothing here
        self.context.audit.event("transfer", fingerprint=self.peer.fingerprint, op=op,
                                path=path, bytes=size - resumed_from, size=size, hash=hash_,
                                resumed_from=resumed_from, outcome="ok")

    def _start_task(self, stream: int, permission: str, op: str,
                    body: Callable[[FileArea], Awaitable[Done]]) -> None:
        try:
            area = self._area(self._check_open(permission))
        except RemoteError as exc:
            self._end_stream(stream, exc)
            return
        handler = _TaskStream()
        self.streams[stream] = handler
        handler.task = self._spawn(self._until_done(stream, self._audited(op, body(area))))

    async def _audited(self, op: str, body: Awaitable[Done]) -> None:
        done = await body
        if op == "get":  # a fetch audits each of its files, a listing nothing
            self._audit(op, done)

    async def _until_done(self, stream: int, body: Awaitable[None]) -> None:
        try:
            await body
        except ConnectionFailed:
            pass  # the connection is gone; the session's own loop reports it
        except (TetherError, OSError) as exc:
            self._end_stream(stream, _as_remote(exc))
        except Exception as exc:  # a bug: still end the stream, so the client never waits
            log.exception("stream %d failed", stream)
            self._end_stream(stream, _as_remote(exc))
        finally:
            self.streams.pop(stream, None)

    def _end_stream(self, stream: int, exc: TetherError) -> None:
        self.context.audit.event("stream_error", fingerprint=self.peer.fingerprint if self.peer
                                else None, stream=stream, code=exc.code, reason=str(exc))
        handler = self.streams.pop(stream, None)
        if handler is not None:
            handler.abandon()
        with contextlib.suppress(TetherError):
            self.conn.send(Error(code=exc.code, message=_sendable(str(exc)), stream=stream))

    # --- events on open streams ----------------------------------------------------------------

    async def _on_data(self, data: Data) -> None:
        handler = self.streams.get(data.stream)
        if handler is None:
            self.conn.consumed(data.stream, len(data.data))
            return
        try:
            handler.feed(data.data)
        except (TetherError, OSError) as exc:
            self._end_stream(data.stream, _as_remote(exc))

    async def _on_stream_message(self, msg: Message) -> None:
        handler = self.streams.get(msg.stream)
        if handler is None:
            return  # its operation already ended; the message was in flight
        try:
            handler.handle(msg)
        except (TetherError, OSError) as exc:
            self._end_stream(msg.stream, _as_remote(exc))

    async def _on_refused(self, refused: Refused) -> None:
        """An opener the core found malformed (a batch over its caps, ...): bad_request."""
        self._end_stream(refused.stream, BadRequest(refused.reason))

    async def _on_close(self, msg: Close) -> None:
        handler = self.streams.pop(msg.stream, None)
        if handler is not None:
            handler.abandon()

    async def _on_error(self, msg: Error) -> None:
        if msg.stream == 0:
            raise ConnectionFailed(f"client error: {msg.message}")
        await self._on_close(Close(stream=msg.stream))

    HANDLERS: ClassVar[dict[type[Any], Callable[[Session, Any], Awaitable[None]]]] = {
        Exec: _on_exec,
        Shell: _on_shell,
        Put: _on_put,
        Batch: _on_batch,
        Fetch: _on_fetch,
        Get: _on_get,
        List: _on_list,
        Refused: _on_refused,
        Data: _on_data,
        Eof: _on_stream_message,
        Signal: _on_stream_message,
        Begin: _on_stream_message,
        Commit: _on_stream_message,
        Resize: _on_stream_message,
        Sync: _on_sync,
        SyncList: _on_stream_message,
        SyncListed: _on_stream_message,
        SyncWant: _on_stream_message,
        SyncFile: _on_stream_message,
        SyncCommit: _on_stream_message,
        SyncBatch: _on_stream_message,
        SyncSent: _on_stream_message,
        Close: _on_close,
        Error: _on_error,
    }

    # --- lifetime ------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _abandon_all(self) -> None:
        for handler in list(self.streams.values()):
            handler.abandon()
        self.streams.clear()


class StreamHandler(Protocol):
    """What the session needs of an open operation."""

    def feed(self, data: bytes | bytearray) -> None: ...
    def handle(self, msg: Message) -> None: ...
    def abandon(self) -> None: ...


class _TaskStream:
    """A server-driven operation (get, list, fetch): the client only ever ends it early (the
    protocol core refuses its DATA and any other message on these streams)."""

    task: asyncio.Task[None] | None = None

    def feed(self, data: bytes | bytearray) -> None:
        pass

    def handle(self, msg: Message) -> None:
        pass

    def abandon(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _sendable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) escaped as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(value: Message) -> bool:
    """Whether every string in a message (fields, lists, dict keys and values) is UTF-8."""
    todo = [getattr(value, f.name) for f in value.FIELDS]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
    return True


def _as_remote(exc: BaseException) -> TetherError:
    """An error that ends one stream, as the client should see it (one line, a wire code)."""
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(exc, OSError):
        return disk_error(exc, str(exc.filename or "operation"))
    return RemoteError(str(exc) or exc.__class__.__name__)


_VERBS = {"exec": "run commands", "shell": "open shells", "put": "upload files",
          "get": "download files"}


