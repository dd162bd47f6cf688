"""The public async API::

    async with tether.connect("host", port=7722) as conn:
        result = await conn.run("uname -a")          # RunResult: status, stdout, stderr
        async with conn.stream(["cat"]) as proc:      # output as it arrives
            await proc.write(b"hello")
            await proc.close_stdin()
            async for channel, chunk in proc:
                ...

The asyncio driver of the client core (:mod:`tether.client.core`, which the one-shot CLI's
blocking driver shares): one reader task per connection routes events to the stream they belong
to; output is queued per stream and flow-control credit is granted only as the application
takes it, so a slow consumer bounds memory instead of growing it. Streams are in
:mod:`tether.client.process`, shells in :mod:`tether.client.shells`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from tether.client.core import REFUSALS, ClientCore, ExitInfo, check_plaintext
from tether.client.deadline import TLS, WELCOME, Deadline
from tether.client.forwarding_api import Forwarding
from tether.client.options import Confirm, ConnectOptions, options_of
from tether.client.process import (
    STDERR,
    STDOUT,
    Process,
    RunResult,
    ServerInfo,
    StreamHandle,
    _feed,
    _ProcessContext,
)
from tether.errors import (
    CommandFailed,
    ConnectionBroken,
    ConnectionClosed,
    RemoteProtocolError,
    TetherError,
)
from tether.home import SIGNED_CERT
from tether.identity import load_identity
from tether.net.framed import FramedConnection, FramedProtocol
from tether.net.translate import connecting, translated
from tether.protocol import Data, Message, Role, Shell

if TYPE_CHECKING:

    from tether.client.shells import LineShell, ShellProcess
    from tether.client.transfer_base import Progress, TransferResult
    from tether.syncing.common import Progress as SyncProgress
    from tether.syncing.common import SyncResult

T = TypeVar("T")
_ExitInfo = ExitInfo  # the name Process.wait()'s result had before it was public


class Connection(Forwarding):
    """An authenticated connection to one tether server."""

    def __init__(self, framed: FramedConnection, info: ServerInfo,
                 core: ClientCore | None = None) -> None:
        self._framed = framed
        self._core = core or ClientCore(framed.proto)
        self.server = info
        self._procs: dict[int, StreamHandle] = {}
        self.shared = False  # lent by tether mux (see tether.client.mux)
        self.home: Path | None = None  # the home it was made from (sync's hash cache is there)
        self.tls = True  # TLS carries it to the server (through a mux or jump hosts too)
        self._reader = asyncio.create_task(self._read_loop())
        self._failure: TetherError | None = None
        self._carriers: list[Connection] = []  # jump hosts this connection rides (--via)
        self._carried: set[asyncio.Task[None]] = set()  # connections riding this one

    async def _read_loop(self) -> None:
        try:
            while True:
                routed = self._core.route(await self._framed.next_event())
                if routed is None:
                    continue
                event = routed
                proc = self._procs.get(event.stream)
                if proc is not None:
                    proc._deliver(event)
                    if not proc.room.is_set():  # the application lags on this stream
                        await proc.room.wait()
                elif isinstance(event, Data):
                    self._framed.consumed(event.stream, len(event.data))
        except TetherError as exc:
            self._fail(exc)
            if isinstance(exc, RemoteProtocolError):
                await self._framed.fail(exc)
        except asyncio.CancelledError:
            self._fail(ConnectionClosed("connection closed"))
            raise

    def _fail(self, exc: TetherError) -> None:
        self._failure = exc
        for proc in self._procs.values():
            proc._deliver(exc)
        self._procs.clear()

    def _end_stream(self, stream: int) -> None:
        proc = self._procs.pop(stream, None)
        if proc is not None:
            proc.room.set()  # its unread events are dropped: the reader goes on
        close = self._core.end(stream)
        if close is not None:
            with contextlib.suppress(TetherError):
                self._framed.send(close)

    def _open(self, handle: StreamHandle, msg: Message) -> None:
        if self._failure is not None:
            raise self._failure
        self._procs[handle.stream] = handle
        self._core.open(msg)  # type: ignore[arg-type]
        self._framed.send(msg)

    def open_stream(self, opener: type[Message], **fields: Any) -> StreamHandle:
        """Open a stream with an ``opener`` message built from ``fields`` (used by transfers)."""
        stream = self._framed.proto.next_stream_id()
        handle = StreamHandle(self, stream)
        self._open(handle, opener(stream=stream, **fields))
        return handle

    # --- public --------------------------------------------------------------------------------

    async def start(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = True,
    ) -> Process:
        """Start a command: a string runs through the server's shell, a sequence as an argv."""
        if self._failure is not None:
            raise self._failure
        request = self._core.exec(cmd, cwd=cwd, env=env, timeout=timeout, stdin=stdin)
        proc = Process(self, request.stream, list(request.argv))
        self._open(proc, request)
        await self._framed.drain()
        return proc

    async def shell(
        self,
        command: str | Sequence[str] | None = None,
        *,
        term: str = "xterm",
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
    ) -> ShellProcess:
        """A login shell (or ``command``) in a remote pseudo-terminal."""
        from tether.client.shells import ShellProcess

        argv = [] if command is None else [command] if isinstance(command, str) else list(command)
        stream = self._framed.proto.next_stream_id()
        proc = ShellProcess(self, stream, argv)
        self._open(proc, Shell(pty=True, term=term, rows=rows, cols=cols, argv=argv,
                               env=dict(env or {}), stream=stream))
        await self._framed.drain()
        return proc

    async def line_shell(self, *, env: Mapping[str, str] | None = None) -> LineShell:
        """A persistent shell in line mode (no terminal); see :class:`LineShell`."""
        from tether.client.shells import LineShell

        handle = self.open_stream(Shell, pty=False, term="dumb", env=dict(env or {}))
        await self._framed.drain()
        return LineShell(handle, self.server.encoding)

    def stream(self, cmd: str | Sequence[str], **kwargs: Any) -> _ProcessContext:
        """``async with conn.stream(cmd) as proc``: a started :class:`Process`."""
        return _ProcessContext(self.start(cmd, **kwargs))

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run a command to completion and collect its output. ``check``: a non-zero status
        raises :class:`~tether.errors.CommandFailed` (status, signal, stdout, stderr)."""
        proc = await self.start(cmd, cwd=cwd, env=env, timeout=timeout, stdin=input is not None)
        writer = asyncio.create_task(_feed(proc, input)) if input is not None else None
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            async for channel, chunk in proc:
                (out if channel == STDOUT else err).append(chunk)
            info = await proc.wait()
        finally:
            if writer is not None:
                writer.cancel()
        result = RunResult(
            proc.argv, info.status, b"".join(out), b"".join(err), info.signal,
            info.timed_out, info.duration, self.server.encoding,
        )
        if check and not result.ok:
            raise CommandFailed(result.argv, result.status, result.signal, result.stdout,
                                result.stderr, result.timed_out)
        return result

    async def put(
        self,
        local: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        remote: str,
        *,
        recursive: bool = False,
        force: bool = False,
        rename: bool = False,
        resume: bool = True,
        progress: Progress | None = None,
        safe_links: bool = False,
    ) -> TransferResult:
        """Upload files (trees with ``recursive``) to ``remote``, verified and atomic; symlinks
        are sent as symlinks (``safe_links``: those leading out of their tree are skipped and
        listed in the result's ``skipped``)."""
        from tether.client import transfer
        from tether.client.transfer_base import Options
        from tether.syncing.common import NoProgress

        sources = [local] if isinstance(local, str | os.PathLike) else list(local)
        return await transfer.put(
            self, [Path(s) for s in sources], remote, recursive=recursive,
            opts=Options(force, rename, resume, progress or NoProgress(), safe_links),
        )

    async def get(
        self,
        remote: str | Sequence[str],
        local: str | os.PathLike[str],
        *,
        recursive: bool = False,
        force: bool = False,
        rename: bool = False,
        resume: bool = True,
        progress: Progress | None = None,
        safe_links: bool = False,
    ) -> TransferResult:
        """Download files (trees with ``recursive``) into ``local``, verified and atomic;
        symlinks are stored as symlinks whatever they point to, and never followed by a write
        (``safe_links``: those leading out of their tree are skipped, see ``skipped``)."""
        from tether.client import transfer
        from tether.client.transfer_base import Options
        from tether.syncing.common import NoProgress

        remotes = [remote] if isinstance(remote, str) else list(remote)
        return await transfer.get(
            self, remotes, Path(local), recursive=recursive,
            opts=Options(force, rename, resume, progress or NoProgress(), safe_links),
        )

    async def wait_closed(self) -> None:
        """Wait until the connection ends; raise why, unless :meth:`close` ended it."""
        try:
            await asyncio.shield(self._reader)
        except asyncio.CancelledError:
            if not self._reader.done():
                raise  # we were cancelled (Ctrl-C), not the connection
        if self._failure is not None and not isinstance(self._failure, ConnectionClosed):
            raise self._failure

    async def sync(
        self,
        src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        dest: str | os.PathLike[str],
        *,
        pull: bool = False,
        checksum: bool = False,
        delete: bool = False,
        dry_run: bool = False,
        exclude: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude_from: Sequence[str | os.PathLike[str]] = (),
        safe_links: bool = False,
        progress: SyncProgress | None = None,
        hash_cache: bool = True,
    ) -> SyncResult:
        """Make ``dest`` hold what ``src`` holds, sending only what differs (rsync's job).

        A push (the default): ``src`` are local paths, ``dest`` a path on the server; with
        ``pull`` ``src`` are server paths and ``dest`` is local. ``SRC/`` syncs the contents
        of SRC, ``SRC`` the directory itself under its name. Returns what was sent, skipped,
        deleted and reused (``SyncResult``; in a dry run, what would be). ``hash_cache``: each
        side may reuse the content hashes of files unchanged since it last read them."""
        from tether.client import syncs

        opts = syncs.sync_options(checksum=checksum, delete=delete, dry_run=dry_run,
                                  exclude=exclude, include=include, exclude_from=exclude_from,
                                  safe_links=safe_links, hash_cache=hash_cache)
        run = syncs.pull if pull else syncs.push
        return await run(self, syncs.source_list(src), os.fspath(dest), opts, progress)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._framed.close()
        for carrier in reversed(self._carriers):
            await carrier.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- connecting ---------------------------------------------------------------------------------


async def _within(deadline: Deadline, work: Awaitable[T]) -> T:
    """``work``, given only the time ``deadline`` has left; running out is its error."""
    try:
        return await asyncio.wait_for(work, deadline.left())
    except TimeoutError:
        raise deadline.expired() from None


async def _link(host: str, port: int, ctx: ssl.SSLContext | None, sni: str,
                deadline: Deadline, sock: socket.socket | None = None) -> FramedProtocol:
    """The connection, TCP then TLS, each phase within what ``deadline`` has left; over
    ``sock`` when given (a jump host's forwarded connection) instead of a new TCP one."""
    from tether.hosttrust import refused_in_handshake

    loop = asyncio.get_running_loop()
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
    with connecting(host, port):
        if ctx is None:
            _, link = await _within(deadline, loop.create_connection(
                lambda: FramedProtocol(Role.CLIENT), **where))
            return link
        transport, _ = await _within(deadline, loop.create_connection(
            asyncio.Protocol, **where))  # nothing is read before TLS starts
        deadline.phase = TLS
        try:
            link = FramedProtocol(Role.CLIENT)
            tls = await _within(deadline, loop.start_tls(
                transport, link, ctx, server_hostname=sni))
        except ssl.SSLCertVerificationError as exc:  # our check of the host's certificate
            transport.close()
            raise refused_in_handshake(host, port, exc) from exc
        except BaseException:
            transport.close()
            raise
    if tls is None:  # the server closed the connection during the handshake
        raise ConnectionBroken(f"{host} port {port}: connection closed during the TLS handshake")
    link.connection_made(tls)  # start_tls does not call it
    return link


async def _open(host: str, options: ConnectOptions, user: str = "",
                sock: socket.socket | None = None) -> Connection:
    """Connect, check the server (its pin or host certificate), hello/welcome (asking for the
    account ``user``) — all within ``options.timeout``, however slowly the bytes come
    (:class:`~tether.client.deadline.Deadline`): the asyncio driver's I/O around the core's
    decisions. ``sock``: a socket already carried to ``host`` (a jump host's forwarded
    connection): TLS runs over it end to end, and the server is pinned as ``host`` as usual."""
    from tether.hosttrust import client_context
    from tether.tls import HOST_CERT_SNI

    if options.plaintext:
        check_plaintext(host)
    elif options.mux != "no" and sock is None:  # through jump hosts: never the mux's
        shared = await _open_shared(host, options, user)
        if shared is not None:
            return shared
    deadline = Deadline(host, options.port, options.timeout)
    home = options.home_dir
    identity = None if options.plaintext else load_identity(home)
    ctx, by_ca = (None, False) if identity is None else client_context(
        home, host, options.port, identity.cert_path, identity.key_path)
    sni = HOST_CERT_SNI if by_ca else "tether"
    framed = FramedConnection(await _link(host, options.port, ctx, sni, deadline, sock))
    core = ClientCore(framed.proto)
    try:
        if identity is not None:
            sslobj = framed.transport.get_extra_info("ssl_object")
            with deadline.paused():  # the user may be asked
                core.check_server(framed.peer_cert, home, host, options.port,
                                  options.accept_new, options.confirm,
                                  sslobj.getpeercert() if by_ca else None)
        deadline.phase = WELCOME
        try:
            framed.send(core.hello(user))
            await _within(deadline, framed.drain())
            answer = await _within(deadline, framed.next_event())
        except REFUSALS as exc:
            error = core.refused(exc, identity is not None,
                                 identity.fingerprint if identity else "",
                                 identity is not None and identity.cert_path.name == SIGNED_CERT)
            if error is exc:
                raise
            raise error from exc
        welcome = core.answer(answer, identity is not None)
    except BaseException:
        await framed.close()
        raise
    info = ServerInfo(
        welcome.server_name, welcome.platform, welcome.encoding, welcome.software,
        core.server_fingerprint, welcome.client_name, welcome.permissions, welcome.user,
    )
    framed.keepalive = options.keepalive or None
    return Connection(framed, info, core)


async def _open_shared(host: str, options: ConnectOptions, user: str) -> Connection | None:
    """A connection lent by this home's ``tether mux`` (started if none runs and ``mux`` is
    ``auto``), or None when no mux can serve (then the caller connects directly, as it also
    does for an unknown server it may ask about)."""
    import functools

    from tether.client import mux
    from tether.errors import HostUnknown

    start = options.mux == "auto"
    if not start and not mux.running(options.home_dir):
        return None
    deadline = Deadline(host, options.port, options.timeout)  # the mux's connecting too
    loop = asyncio.get_running_loop()
    ask = functools.partial(mux.open_shared, options.home_dir, host, options.port,
                            accept_new=options.accept_new, keepalive=options.keepalive,
                            persist=options.mux_persist, start=start, timeout=options.timeout,
                            user=user)
    try:
        sock, server_fp = await loop.run_in_executor(None, ask)
    except mux.MuxUnavailable:
        return None
    except HostUnknown:
        if options.confirm is None:
            raise
        return None
    with translated():
        _, link = await loop.create_connection(lambda: FramedProtocol(Role.CLIENT), sock=sock)
    framed = FramedConnection(link)
    core = ClientCore(framed.proto)
    core.server_fingerprint = server_fp
    deadline.phase = WELCOME
    try:
        framed.send(core.hello(user))
        await framed.drain()
        welcome = core.answer(await _within(deadline, framed.next_event()), True)
    except BaseException:
        await framed.close()
        raise
    info = ServerInfo(welcome.server_name, welcome.platform, welcome.encoding, welcome.software,
                      server_fp, welcome.client_name, welcome.permissions, welcome.user)
    conn = Connection(framed, info, core)
    conn.shared = True  # the mux pings the server; a dead mux closes the socket
    return conn


def _inventory_target(host: str, options: ConnectOptions, port_given: bool, user: str
                      ) -> tuple[str, ConnectOptions, str]:
    """An inventory name (``hosts.toml`` in the home) becomes its address, with its port, its
    keepalive and its account unless the caller gave them, as the CLI and
    :func:`tether.connect_many` resolve names; anything else is returned as it is."""
    from tether.inventory import InventoryError, is_address, load, names_inventory_host

    try:
        if not names_inventory_host(host, options.home):
            return host, options, user
    except InventoryError:
        if is_address(host):  # an address needs no inventory (the CLI warns about it)
            return host, options, user
        raise
    target = load(options.home).hosts[host].target()
    changes: dict[str, Any] = {}
    if not port_given:
        changes["port"] = target.port
    if options.keepalive is None and target.keepalive:
        changes["keepalive"] = target.keepalive
    return target.address, options.with_(**changes), user or target.user


class connect:  # used like a function: `async with tether.connect(...)`
    """Connect to a tether server: ``await tether.connect(...)`` or ``async with``.

    ``host`` is an address, a DNS name, or a name in the inventory (``tether hosts``), which
    connects to that host's address and port (a ``port`` given here wins), like the CLI.

    The options are a :class:`~tether.client.options.ConnectOptions` (``options=``) or its
    fields as keywords (a keyword given wins over ``options``). ``keepalive`` (seconds, like
    ssh's ServerAliveInterval; None or 0: off): after that much silence from the server, ping
    it; after three silent intervals the connection is broken (ConnectionBroken "no answer from
    the server for N s"), so a server that vanished without closing is noticed even while a
    command runs. ``user`` (or ``host`` written ``user@host``) asks the server to run this
    connection's work as that Unix account; the server admits it only if this client's
    principal or authorized entry allows that account. ``via`` (ssh's ``-J``): jump hosts,
    ``HOST[:PORT]`` or inventory names, reached in order; the connection to ``host`` rides a
    forwarded connection through them with TLS end to end (each hop only relays its bytes),
    and every host is authenticated and pinned as usual.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        options: ConnectOptions | None = None,
        home: str | os.PathLike[str] | None = None,
        accept_new: bool | None = None,
        plaintext: bool | None = None,
        confirm: Confirm | None = None,
        timeout: float | None = None,
        keepalive: float | None = None,
        mux: str | None = None,
        mux_persist: float | None = None,
        user: str = "",
        via: Sequence[str] | None = None,
    ) -> None:
        if not user and "@" in host:
            user, _, host = host.rpartition("@")
        self.host = host
        self.user = user
        self.options = options_of(options, port=port, home=home, accept_new=accept_new,
                                  plaintext=plaintext, confirm=confirm, timeout=timeout,
                                  keepalive=keepalive, mux=mux, mux_persist=mux_persist)
        self._port_given = port is not None or (options is not None
                                                and options.port != ConnectOptions.port)
        self._conn: Connection | None = None
        self.via = [hop for item in via or () for hop in item.split(",") if hop]

    async def _connect(self) -> Connection:
        from tether.client.jump import inventory_via, through

        via = self.via or inventory_via(self.host, self.options.home)
        host, options, user = _inventory_target(self.host, self.options, self._port_given,
                                                self.user)
        hops: list[Connection] = []
        if via:
            conn, hops = await through(via, host, options, user, _open, _inventory_target)
        else:
            conn = await _open(host, options, user)
        conn._carriers, conn.home, conn.tls = hops, options.home_dir, not options.plaintext
        return conn

    def __await__(self) -> Any:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._connect()
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            await self._conn.close()


__all__ = [
    "STDERR",
    "STDOUT",
    "ConnectOptions",
    "Connection",
    "ExitInfo",
    "LineShell",
    "Process",
    "RunResult",
    "ServerInfo",
    "ShellProcess",
    "StreamHandle",
    "connect",
]


def __getattr__(name: str) -> Any:
    """The shell classes, re-exported from :mod:`tether.client.shells` when asked for."""
    if name in ("LineShell", "ShellProcess"):
        from tether.client import shells

        return getattr(shells, name)
    raise AttributeError(name)
