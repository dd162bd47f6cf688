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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

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
from tether.identity import PERMISSIONS
from tether.net.framed import FramedConnection, FramedProtocol
from tether.protocol import (
    PROTOCOL_VERSIONS,
    Batch,
    Begin,
    Close,
    Commit,
    Connect,
    Data,
    Done,
    Eof,
    Error,
    Exec,
    Fetch,
    Get,
    Hello,
    List,
    Listen,
    Message,
    Put,
    Refused,
    Resize,
    Shell,
    Signal,
    Welcome,
)
from tether.protocol.ranges import problem
from tether.protocol.sync_messages import Sync
from tether.server.batch import FETCHES_AT_ONCE, BatchPut, send_batch
from tether.server.buffers import Meter
from tether.server.context import Peer, SessionContext
from tether.server.descriptors import COSTS, Holder
from tether.server.exec import CommandRun, ExecPolicy, exec_spec
from tether.server.forward import Forwards
from tether.server.limits import Limits
from tether.server.privsep import Worker, serve_as
from tether.server.runs import command_run, line_run, platform_name
from tether.server.shell import PtyRun, shell_spec
from tether.server.stall import StallWatch
from tether.server.streamkit import VERBS as _VERBS
from tether.server.streamkit import StreamHandler, presented, refused
from tether.server.streamkit import TaskStream as _TaskStream
from tether.server.streamkit import as_remote as _as_remote
from tether.server.streamkit import identity_fields as _identity_fields
from tether.server.streamkit import request_fields as _request
from tether.server.streamkit import sendable as _sendable
from tether.server.sync import SYNC_MESSAGES, SyncStream, run_sync
from tether.server.transfer import PutTransfer, send_file, send_listing
from tether.server.trust import account_home
from tether.storage.area import FileArea
from tether.version import __version__

log = logging.getLogger("tether.server")


class Session:
    """``peer`` given: a privilege-separated worker's session (server/privsep.py), whose client
    the parent already admitted; ``address``: the client's, which the worker's socket lacks."""

    def __init__(self, context: SessionContext, link: FramedProtocol, peer: Peer | None = None,
                 address: str | None = None) -> None:
        self.context = context
        self.conn = FramedConnection(link)
        self.preset = peer
        self.address = address
        self.worker: Worker | None = None  # the worker serving this session as its account
        self.peer: Peer | None = None
        self.streams: dict[int, StreamHandler] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetch_slots = asyncio.Semaphore(FETCHES_AT_ONCE)
        self.list_slots = asyncio.Semaphore(FETCHES_AT_ONCE)  # listings read at once, the same
        self.stall = StallWatch(self.limits.stall_timeout, self._stalled)  # uploads
        self.held = Holder(None, "")  # descriptors held by stream, once the peer is known
        self.forwards = Forwards(self.conn, context.forwarding, context.audit,
                                 self.limits.max_forwards_per_connection)
        self.meter: Meter | None = None  # bytes held, in the identity's budget (buffers.py)

    async def serve(self) -> None:
        address = self.address or self.conn.peer_address
        audit = self.context.audit
        admitted, handed_over, reason = False, False, ""
        try:
            hello = await asyncio.wait_for(self._hello(), self.limits.handshake_timeout)
            if self.preset is not None:  # a worker: admitted by the parent
                self.peer = self.preset
            else:
                self.peer = self._authorize(hello.user)
                self._admit(self.peer)
                admitted = True
                if self.peer.user is not None:
                    handed_over = True
                    await serve_as(self, hello, self.context.counts)
                    return
            self.held = Holder(self.context.descriptors, self.peer.fingerprint)
            if self.context.buffers is not None:
                self.meter = self.context.buffers.join(self.peer.fingerprint, self.conn.link,
                                                       self._buffered)
            await self._welcome(hello)
            log.info("connected %s %s (%s)", address, self.peer.name, self.peer.fingerprint)
            audit.event("connection", address=address, fingerprint=self.peer.fingerprint,
                        name=self.peer.name, **_identity_fields(self.peer))
            self.conn.frame_timeout = self.limits.frame_timeout or None
            self.conn.idle_timeout = self.limits.idle_timeout or None
            self.conn.keepalive = self.limits.keepalive if self.limits.keepalive > 0 else None
            await self._dispatch_loop()
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s", address, exc)
            audit.event("protocol_error", address=address, reason=str(exc))
            await self.conn.fail(exc)
        except (NotAuthorized, VersionMismatch, Busy) as exc:
            refused(self.context, address, str(exc), presented(self.context, self.conn))
            await self.conn.fail(exc)
        except TimeoutError:
            refused(self.context, address, "no hello in time")
            await self.conn.fail(ConnectionFailed("handshake timed out"))
        except ConnectionFailed as exc:
            log.info("disconnected %s: %s", address, exc)
            reason = str(exc)
        finally:
            self._abandon_all()
            if self.meter is not None:
                self.meter.leave()
            await self.conn.close()
            if admitted and self.peer is not None:
                self.context.admission.client_left(self.peer.fingerprint)
                if self.peer.user is not None:
                    self.context.admission.account_left(self.peer.user)
            if (admitted or self.preset is not None) and self.peer is not None and not handed_over:
                audit.event("disconnection", address=address, fingerprint=self.peer.fingerprint,
                            **({"reason": reason} if reason else {}))

    def _admit(self, peer: Peer) -> None:
        """Count the connection per identity and per Unix account, or refuse it (Busy)."""
        admission = self.context.admission
        refusal = admission.admit_client(peer.fingerprint)
        if refusal is None and peer.user is not None:
            refusal = admission.admit_account(peer.user)
            if refusal is not None:
                admission.client_left(peer.fingerprint)
        if refusal is not None:
            raise Busy(refusal)

    def _buffered(self) -> int:
        """Bytes this session's streams hold (a command's unread stdin, a batch's queue)."""
        return sum(getattr(handler, "buffered", 0) for handler in self.streams.values())

    @property
    def limits(self) -> Limits:
        return self.context.limits

    @property
    def busy(self) -> bool:
        """Whether an operation is under way: one this session runs, or one whose request
        arrived and is still starting (the protocol has its stream open). A drain waits for
        it; an idle session may be closed at once."""
        return bool(self.streams) or self.conn.proto.open_streams > 0

    async def shutdown(self) -> None:
        """The server is stopping: tell the client, kill its commands."""
        if self.worker is not None:  # the worker does both
            self.worker.terminate()
            return
        self._abandon_all()
        await self.conn.fail(ServerShuttingDown("server shutting down"))

    def _authorize(self, user: str) -> Peer:
        """Who the client is and what it may do (server/trust.py), or NotAuthorized."""
        context = self.context
        if context.plaintext:
            if user:
                raise NotAuthorized("a plaintext server cannot switch accounts")
            return Peer("plaintext", "plaintext", context.root, frozenset(PERMISSIONS))
        cert = self.conn.peer_cert
        if not cert:
            raise NotAuthorized("no client certificate")
        grant = context.trust.admit(cert, context.authorized(), user)
        root = grant.root or (account_home(grant.user) if grant.user else context.root)
        return Peer(grant.fingerprint, grant.name, root, grant.permissions, grant.confined,
                    grant.user, grant.serial, grant.principals)

    async def _hello(self) -> Hello:
        hello = await self.conn.next_event()
        if not isinstance(hello, Hello):
            raise RemoteProtocolError("the first frame must be hello")
        return hello

    async def _welcome(self, hello: Hello) -> None:
        assert self.peer is not None
        common = set(hello.versions) & set(PROTOCOL_VERSIONS)
        if not common:
            raise VersionMismatch(
                f"client offered protocol versions {hello.versions[:8]}, "
                f"server speaks {list(PROTOCOL_VERSIONS)}"
            )
        next_cert, next_proof = self.context.next_key()
        self.conn.send(
            Welcome(
                version=max(common),
                software=f"tether/{__version__}",
                server_name=self.context.name,
                platform=platform_name(),
                encoding=self.context.encoding,
                client_fingerprint=self.peer.fingerprint,
                client_name=self.peer.name,
                permissions=sorted(self.peer.permissions),
                user=self.peer.user or hello.user,  # admission checked hello.user
                next_cert=next_cert,
                next_proof=next_proof,
            )
        )
        await self.conn.drain()

    async def _dispatch_loop(self) -> None:
        while True:
            event = await self.conn.next_event()
            handler = self.HANDLERS.get(type(event))
            if handler is None:
                raise RemoteProtocolError(f"a client may not send {type(event).__name__}")
            if isinstance(event, Message) and event.OPENS:
                self._check_unclosed()
            if isinstance(event, Message) and event.stream and (
                    event.OPENS or event.stream in self.streams):
                wrong = problem(event)  # out-of-range integers, lone surrogates
                if wrong is not None:
                    self._end_stream(event.stream, BadRequest(wrong),
                                     _request(event) if event.OPENS else None)
                    continue
            await handler(self, event)

    # --- opening streams -----------------------------------------------------------------------

    def _check_unclosed(self) -> None:
        """A client must ``close`` each stream the server ended; one that never does would grow
        the server's stream table with every refused request, so past the operation cap it is
        dropped."""
        unclosed = self.conn.proto.unclosed
        if unclosed > self.limits.max_streams_per_connection:
            raise RemoteProtocolError(f"{unclosed} streams the server ended were never closed "
                                      f"(limit {self.limits.max_streams_per_connection})")

    def _check_open(self, permission: str, stream: int, op: str) -> Peer:
        """The peer, allowed ``permission``, within the operation cap, holding the descriptors
        ``op`` may keep open (given back when the stream ends, see :meth:`_forget`)."""
        assert self.peer is not None
        if permission not in self.peer.permissions:
            raise PermissionDenied(f"this client may not {_VERBS[permission]}")
        # the new stream is open already; streams the client never closed count too (forwarded
        # connections have a cap of their own: Forwards.connect)
        others = self.conn.proto.open_streams - len(self.forwards.pipes)
        if op != "connect" and others > self.limits.max_streams_per_connection:
            raise BadRequest("too many operations at once on one connection "
                             f"(limit {self.limits.max_streams_per_connection})")
        self.held.take(stream, COSTS[op])
        return self.peer

    def _area(self, peer: Peer) -> FileArea:
        return FileArea(peer.root, peer.confined, self.context.reserved)

    def _policy(self, peer: Peer) -> ExecPolicy:
        lim = self.limits
        return ExecPolicy(peer.root, self.context.kill_grace, lim.process_nproc,
                          lim.process_memory, peer.confined, self.context.pass_env)

    async def _on_exec(self, msg: Exec) -> None:
        def make(policy: ExecPolicy) -> CommandRun:
            return command_run(self.conn, msg.stream, exec_spec(msg, policy), policy)

        await self._start_process(msg.stream, "exec", make, {"argv": msg.argv, "cwd": msg.cwd})

    async def _on_shell(self, msg: Shell) -> None:
        def make(policy: ExecPolicy) -> CommandRun:
            if msg.pty:
                spec = shell_spec(msg, policy, line_mode=False)
                return PtyRun(self.conn, msg.stream, spec, policy, msg.rows, msg.cols)
            return line_run(self.conn, msg.stream, shell_spec(msg, policy, line_mode=True),
                            policy)

        await self._start_process(msg.stream, "shell", make,
                                  {"argv": msg.argv, "pty": msg.pty})

    async def _start_process(self, stream: int, permission: str,
                             make: Callable[[ExecPolicy], CommandRun],
                             what: dict[str, Any]) -> None:
        """Check, count, start and audit a command or shell; its errors end only its stream."""
        try:
            peer = self._check_open(permission, stream, permission)
            run = make(self._policy(peer))
            refusal = self.context.admission.admit_process(peer.fingerprint)
            if refusal is not None:
                raise Busy(refusal)
        except RemoteError as exc:
            self._end_stream(stream, exc, {"op": permission, **what})
            return
        try:
            await run.start()
        except RemoteError as exc:
            self.context.admission.process_ended(peer.fingerprint)
            self._end_stream(stream, exc)
            self.context.audit.event("command", fingerprint=peer.fingerprint, name=peer.name,
                                     **what, outcome=str(exc))
            return
        self.streams[stream] = run
        log.info("%s %s stream %d pid %s: %r", permission, peer.label, stream,
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
        started = time.monotonic()
        try:
            area = self._area(self._check_open("put", msg.stream, "put"))
            put = PutTransfer(self.conn, msg.stream, msg, area, self.limits.max_upload,
                              lambda done: self._audit("put", done, started), self._offload)
            await put.start()
        except (RemoteError, OSError) as exc:
            self._end_stream(msg.stream, _as_remote(exc), _request(msg))
            return
        if put.partial is not None:
            self.streams[msg.stream] = put
            self.stall.watch(msg.stream)
        else:  # a directory or symlink: done already
            self.held.give(msg.stream)

    async def _on_batch(self, msg: Batch) -> None:
        try:
            area = self._area(self._check_open("put", msg.stream, "batch"))
            batches = sum(isinstance(h, BatchPut) for h in self.streams.values())
            if batches >= self.limits.max_batches_per_connection:
                raise Busy(f"too many batches at once on one connection (limit "
                           f"{self.limits.max_batches_per_connection})")
            batch = BatchPut(self.conn, msg.stream, msg, area,
                             self.limits.max_upload,
                             lambda path, size, hash_: self._audit_file("put", path, size, hash_),
                             self._offload)
            batch.check()
        except (RemoteError, OSError) as exc:
            self._end_stream(msg.stream, _as_remote(exc), _request(msg))
            return
        self.streams[msg.stream] = batch
        self.stall.watch(msg.stream)  # its files are stored by its task, on the disk pool
        batch.task = self._spawn(self._until_done(msg.stream, batch.run(), _request(msg)))

    async def _on_fetch(self, msg: Fetch) -> None:
        def on_file(path: str, size: int, hash_: str) -> None:
            self._audit_file("get", path, size, hash_)

        self._start_task(msg, "get", "fetch",
                         lambda area: send_batch(self.conn, msg.stream, msg, area, on_file,
                                                 self._fetch_slot(), self._offload))

    @contextlib.asynccontextmanager
    async def _fetch_slot(self) -> AsyncIterator[None]:
        """A fetch's turn: one of this connection's, and of this identity's."""
        assert self.peer is not None
        async with self.fetch_slots, self.context.fetches.hold(self.peer.fingerprint):
            yield

    async def _on_sync(self, msg: Sync) -> None:
        """A push needs put, a pull get; the side reads the stream from a bounded queue."""
        try:
            area = self._area(self._check_open("put" if msg.push else "get", msg.stream, "sync"))
        except RemoteError as exc:
            self._end_stream(msg.stream, exc, _request(msg))
            return
        handler = self.streams[msg.stream] = SyncStream(self.conn, msg.stream,
                                                        tls=not self.context.plaintext)
        handler.task = self._spawn(self._until_done(msg.stream, run_sync(
            handler, msg, area, self.context.hash_cache, self._offload)))

    async def _on_get(self, msg: Get) -> None:
        self._start_task(msg, "get", "get",
                         lambda area: send_file(self.conn, msg.stream, msg, area,
                                                self._offload))

    async def _on_list(self, msg: List) -> None:
        self._start_task(msg, "get", "list",
                         lambda area: send_listing(
                             self.conn, msg.stream, msg, area, self.list_slots,
                             self.held.for_stream(msg.stream)))

    async def _on_forward(self, msg: Connect | Listen) -> None:
        """A forwarded connection or a listener (server/forward.py), run in a task."""
        try:
            peer = self._check_open("forward", msg.stream, msg.TYPE)
            handler = (self.forwards.connect(msg, peer) if isinstance(msg, Connect)
                       else await self.forwards.listen(msg, peer))
        except RemoteError as exc:
            self._end_stream(msg.stream, exc, _request(msg))
            return
        self.streams[msg.stream] = handler
        handler.task = self._spawn(self._until_done(msg.stream, handler.run()))

    async def _offload(self, fn: Callable[..., Any], *args: Any,
                       cleanup: Callable[[Any], object] | None = None) -> Any:
        """Long file work on the server's disk pool (inline without one)."""
        if self.context.disk is None or self.peer is None:
            return fn(*args)
        return await self.context.disk.run(self.peer.fingerprint, fn, *args, cleanup=cleanup)

    def _audit(self, op: str, done: Done, started: float | None = None) -> None:
        self._audit_file(op, done.path, done.size, done.hash, done.resumed_from, started)

    def _audit_file(self, op: str, path: str, size: int, hash_: str,
                    resumed_from: int = 0, started: float | None = None) -> None:
        assert self.peer is not None
        if not self.context.audit.wanted:
            return  # no audit log, no metrics: a batch's files cost nothing here
        timing = {} if started is None else {"duration": round(time.monotonic() - started, 6)}
        self.context.audit.event("transfer", fingerprint=self.peer.fingerprint, op=op,
                                path=path, bytes=size - resumed_from, size=size, hash=hash_,
                                resumed_from=resumed_from, outcome="ok", **timing)

    def _start_task(self, msg: Message, permission: str, op: str,
                    body: Callable[[FileArea], Awaitable[Done]]) -> None:
        stream = msg.stream
        try:
            area = self._area(self._check_open(permission, stream, op))
        except RemoteError as exc:
            self._end_stream(stream, exc, _request(msg))
            return
        handler = _TaskStream()
        self.streams[stream] = handler
        handler.task = self._spawn(self._until_done(stream, self._audited(op, body(area))))

    async def _audited(self, op: str, body: Awaitable[Done]) -> None:
        started = time.monotonic()
        done = await body
        if op == "get":  # a fetch audits each of its files
            self._audit(op, done, started)
        elif op == "list" and self.peer is not None:
            self.context.audit.event("list", fingerprint=self.peer.fingerprint,
                                     path=done.path, count=done.count, outcome="ok")

    async def _until_done(self, stream: int, body: Awaitable[None],
                          request: dict[str, Any] | None = None) -> None:
        try:
            await body
        except ConnectionFailed:
            pass  # the connection is gone; the session's own loop reports it
        except (TetherError, OSError) as exc:
            self._end_stream(stream, _as_remote(exc), request)
        except Exception as exc:  # a bug: still end the stream, so the client never waits
            log.exception("stream %d failed", stream)
            self._end_stream(stream, _as_remote(exc))
        finally:
            self._forget(stream)

    def _forget(self, stream: int) -> None:
        """The stream's operation is over here: stop watching it, give back what it held."""
        self.forwards.ended(stream)
        self.stall.unwatch(stream)
        self.held.give(stream)
        self.streams.pop(stream, None)

    def _end_stream(self, stream: int, exc: TetherError,
                    request: dict[str, Any] | None = None) -> None:
        """End one stream with ``exc``; ``request`` (what a refused request asked: op, argv or
        path) goes into its audit record."""
        self.context.audit.event("stream_error", fingerprint=self.peer.fingerprint if self.peer
                                else None, stream=stream, code=exc.code, reason=str(exc),
                                **(request or {}))
        handler = self.streams.get(stream)
        if handler is not None:
            handler.abandon()
        self._forget(stream)
        with contextlib.suppress(TetherError):
            self.conn.send(Error(code=exc.code, message=_sendable(str(exc)), stream=stream))

    # --- events on open streams ----------------------------------------------------------------

    def _stalled(self, stream: int) -> None:
        """An upload received no data for ``stall_timeout``: end it, unless it is over (ended,
        or its answer sent and only the client's close missing)."""
        if stream in self.streams and self.conn.proto.can_send(stream):
            self._end_stream(stream, Busy(f"no data for {self.stall.timeout:g} s: the upload "
                                          f"was ended (serve --stall-timeout)"))

    async def _on_data(self, data: Data) -> None:
        self.stall.heard(data.stream)
        handler = self.streams.get(data.stream)
        if handler is None:
            self.conn.consumed(data.stream, len(data.data))
            return
        try:
            handler.feed(data.data)
        except (TetherError, OSError) as exc:
            self._end_stream(data.stream, _as_remote(exc))
        if self.meter is not None:  # what the stream holds now (stdin, a batch's queue)
            self.meter.update()

    async def _on_stream_message(self, msg: Message) -> None:
        handler = self.streams.get(msg.stream)
        if handler is None:
            return  # its operation already ended; the message was in flight
        try:
            pending = handler.handle(msg)  # a put's commit: finished off the loop, in a task
        except (TetherError, OSError) as exc:
            self._end_stream(msg.stream, _as_remote(exc))
            return
        if pending is not None:
            self.stall.unwatch(msg.stream)  # all its data is in
            self._spawn(self._until_done(msg.stream, pending))

    async def _on_refused(self, refused: Refused) -> None:
        """An opener the core found malformed (a batch over its caps, ...): bad_request."""
        self._end_stream(refused.stream, BadRequest(refused.reason))

    async def _on_close(self, msg: Close) -> None:
        handler = self.streams.get(msg.stream)
        if handler is not None:
            handler.abandon()
        self._forget(msg.stream)

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
        Connect: _on_forward,
        Listen: _on_forward,
        Refused: _on_refused,
        Data: _on_data,
        Eof: _on_stream_message,
        Signal: _on_stream_message,
        Begin: _on_stream_message,
        Commit: _on_stream_message,
        Resize: _on_stream_message,
        Sync: _on_sync,
        **dict.fromkeys(SYNC_MESSAGES, _on_stream_message),
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
        self.stall.clear()
        for handler in list(self.streams.values()):
            handler.abandon()
        self.streams.clear()
        self.held.give_all()
