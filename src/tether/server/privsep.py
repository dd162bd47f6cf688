"""Privilege separation: a session mapped to a Unix account runs in a process that has dropped
to that account, as sshd's post-authentication child does.

When a root server admits a client for another account (server/trust.py), the listener's process
keeps the TLS connection and its keys, and forks a worker for the session. The worker closes
every descriptor it does not need (other clients, the listening sockets, the parent's event
loop), sets its groups (``initgroups``, ``setgid``) and its user (``setuid``) — after which it
can never regain root, and the kernel marks it non-dumpable, so the account cannot trace it —
takes the account's login environment (HOME, USER, LOGNAME, SHELL, PATH) and home, and serves
the session with a fresh event loop over a socket pair. The parent only pumps bytes between the
TLS connection and that socket pair; the worker's session sends ``welcome`` and everything
after it, so every command, shell and file operation happens with the account's rights, and the
files it writes are the account's.

The worker is forked, never exec'd: the interpreter may live where the account cannot read (a
pyenv under /root), so the modules a session needs are imported before privileges are dropped.

Per-account limits: the worker counts its commands in a table shared by every worker (a memfd
with one counter per account and per identity, locked per counter with ``lockf``), so
``--max-processes-per-client`` holds per Unix account and per identity across connections. A
worker that dies leaves its counts to the parent, which takes them back. The bytes an identity's
connections hold (``--max-buffered-per-client``, server/buffers.py) are counted there too.

Service mode (server/service.py): a draining parent sends the worker SIGUSR1, and the worker lets
its session's work finish for the drain time before it ends the session (SIGTERM still ends it
at once). With metrics on, the worker's audit events reach the parent's observers through a pipe
(:class:`~tether.server.audit.EventRelay`), and the gauges read the shared counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from tether.protocol import Role
from tether.protocol.connection import Connection
from tether.server.audit import EventRelay
from tether.server.buffers import ByteBudget
from tether.server.diskpool import DiskPool
from tether.server.environment import login_environment
from tether.server.limits import Admission
from tether.server.shares import Shares

if TYPE_CHECKING:
    from tether.net.framed import FramedConnection
    from tether.protocol import Hello

if sys.platform != "win32":  # a Windows server never switches accounts (server/trust.py)
    import fcntl
    import pwd

log = logging.getLogger("tether.server")

# Imported before dropping privileges: the account may not be able to read the interpreter's
# library directory, and a session imports some of these only when first used.
PRELOAD = ("asyncio.subprocess", "asyncio.unix_events", "pty", "tty", "termios", "shlex",
           "tempfile", "shutil", "json", "hashlib", "encodings.latin_1", "encodings.ascii",
           "encodings.utf_8", "encodings.idna", "tether.server.batch", "tether.server.transfer",
           "tether.server.shell", "tether.server.exec", "tether.server.process",
           "tether.storage.area", "tether.storage.batch", "tether.storage.errors",
           "tether.storage.names", "tether.storage.partial", "tether.storage.source")
# parent to worker: finish what is under way, then end (no workers on Windows, nor SIGUSR1)
DRAIN_SIGNAL = signal.SIGUSR1 if sys.platform != "win32" else signal.SIGTERM
SLOTS = 4096  # counters in the shared table (accounts and identities seen since start)
_COUNTER = struct.Struct("=q")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def named(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir,
                   entry.pw_shell or "/bin/sh")


# --- counters shared by the workers -------------------------------------------------------------


class SharedCounts:
    """Counters in a memfd every worker inherits: one per key (an account, an identity, a
    worker), allocated by the parent while a worker uses it and freed after the last one."""

    def __init__(self) -> None:
        # close-on-exec: commands never see it. No memfd (Windows): no table, and no worker is
        # ever forked there, since such a server does not switch accounts (server/trust.py).
        self.fd = os.memfd_create("tether-counts", 0) if hasattr(os, "memfd_create") else -1
        if self.fd >= 0:
            os.ftruncate(self.fd, SLOTS * _COUNTER.size)
        self.slots: dict[str, int] = {}
        self.users: dict[str, int] = {}  # live workers per key
        self.free = list(range(SLOTS - 1, -1, -1))

    def acquire(self, key: str) -> int:
        """The counter of ``key``, taken in the parent before forking (so workers agree)."""
        if key not in self.slots:
            if not self.free:
                from tether.errors import Busy

                raise Busy(f"too many accounts and identities in use at once ({SLOTS})")
            self.slots[key] = slot = self.free.pop()
            os.pwrite(self.fd, _COUNTER.pack(0), slot * _COUNTER.size)
        self.users[key] = self.users.get(key, 0) + 1
        return self.slots[key]

    def release(self, key: str) -> None:
        """A worker using ``key`` is gone; the last one frees its counter."""
        self.users[key] -= 1
        if self.users[key] == 0:
            del self.users[key]
            self.free.append(self.slots.pop(key))

    def add(self, slot: int, delta: int, limit: int | None = None) -> bool:
        """Add ``delta`` unless that would pass ``limit``; False if refused."""
        offset = slot * _COUNTER.size
        fcntl.lockf(self.fd, fcntl.LOCK_EX, _COUNTER.size, offset)
        try:
            (value,) = _COUNTER.unpack(os.pread(self.fd, _COUNTER.size, offset))
            if limit is not None and delta > 0 and value + delta > limit:
                return False
            os.pwrite(self.fd, _COUNTER.pack(max(value + delta, 0)), offset)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, _COUNTER.size, offset)

    def value(self, slot: int) -> int:
        return int(_COUNTER.unpack(os.pread(self.fd, _COUNTER.size, slot * _COUNTER.size))[0])


class WorkerAdmission(Admission):
    """The worker's admission: processes are counted in the shared counters of its account and
    identity (the parent admitted the connection). ``held`` is this worker's own share, for the
    parent to take back if the worker dies."""

    def __init__(self, parent: Admission, counts: SharedCounts, slots: tuple[int, int],
                 held_slot: int) -> None:
        super().__init__(parent.limits)
        self.counts = counts
        self.user_slot, self.identity_slot = slots
        self.held_slot = held_slot

    def admit_process(self, fingerprint: str) -> str | None:
        limit = self.limits.max_processes_per_client
        if not self.counts.add(self.user_slot, 1, limit):
            return f"too many processes for this account (limit {limit})"
        if not self.counts.add(self.identity_slot, 1, limit):
            self.counts.add(self.user_slot, -1)
            return f"too many processes for this client (limit {limit})"
        self.counts.add(self.held_slot, 1)
        return None

    def process_ended(self, fingerprint: str) -> None:
        for slot in (self.user_slot, self.identity_slot, self.held_slot):
            self.counts.add(slot, -1)


class SharedByteBudget(ByteBudget):
    """A worker's byte budget (server/buffers.py): what its identity's connections hold is a
    counter every worker shares, so the budget binds across them as it does across the
    connections of one process; ``held_slot`` is this worker's part, for the parent to take
    back if the worker dies."""

    def __init__(self, per_client: int, counts: SharedCounts, slot: int, held_slot: int) -> None:
        super().__init__(per_client)
        self.counts = counts
        self.slot = slot
        self.held_slot = held_slot

    def add(self, client: str, delta: int) -> int:
        if delta:
            self.counts.add(self.slot, delta)
            self.counts.add(self.held_slot, delta)
        return self.counts.value(self.slot)


class MappedSession(Protocol):
    """What privilege separation needs of a session (server/session.py, which imports this
    module, not the other way round): who the peer is, its connection and context, and a way
    to make the worker's own session (``type(session)``)."""

    peer: Any  # session.Peer: fingerprint, name, user
    conn: FramedConnection
    context: Any  # session.SessionContext: kill_grace, audit, admission
    worker: Worker | None
    tasks: set[asyncio.Task[None]]

    @property
    def busy(self) -> bool: ...

    def __init__(self, context: Any, link: Any, peer: Any = None,
                 address: str | None = None) -> None: ...

    async def serve(self) -> None: ...

    async def shutdown(self) -> None: ...


# --- the parent's side --------------------------------------------------------------------------


class _Pump(asyncio.Protocol):
    """Bytes from one transport to another, with the receiver's back-pressure."""

    def __init__(self, other: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.other = other
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.other.is_closing():
            self.other.write(data)

    def eof_received(self) -> bool:
        """Half-close the other side where it can be (the worker's socket), and keep ours open
        for the answer, unless ours is TLS (which cannot stay half-open)."""
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError, AttributeError):
            if self.other.can_write_eof():
                self.other.write_eof()
                assert self.transport is not None
                return self.transport.get_extra_info("sslcontext") is None
        self.other.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.other.close()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self.other.pause_reading()

    def resume_writing(self) -> None:
        self.other.resume_reading()


class Worker:
    """The parent's handle on one worker: its pid, and how to stop it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def terminate(self) -> None:
        """The server is stopping: the worker tells its client and kills its commands."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def drain(self) -> None:
        """The server is draining: the worker lets its session's work finish (for the drain
        time it was started with), then ends the session; ``terminate`` still ends it now."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, DRAIN_SIGNAL)


async def serve_as(session: MappedSession, hello: Hello, counts: SharedCounts) -> None:
    """Fork a worker dropped to ``session.peer.user`` that serves the rest of this session, pump
    bytes between it and the client, and reap it."""
    peer = session.peer
    assert peer is not None and peer.user is not None
    conn = session.conn
    # what the client pipelined behind its hello (docs/PROTOCOL.md, "Pipelining") goes to the
    # worker after the replayed hello, unread here
    unread = conn.proto.take_unread()
    if unread is None:
        from tether.errors import RemoteProtocolError

        raise RemoteProtocolError("the client sent a large body before welcome")
    account = Account.named(peer.user)
    taken: list[str] = []
    try:
        worker = os.urandom(8).hex()
        for key in (f"user {account.name}", f"id {peer.fingerprint}", f"worker {worker}",
                    f"bytes {peer.fingerprint}", f"worker bytes {worker}"):
            counts.acquire(key)
            taken.append(key)
        user, identity, held, held_bytes, worker_bytes = (counts.slots[key] for key in taken)
        await _fork_and_pump(session, hello, account, counts, (user, identity), held,
                             (held_bytes, worker_bytes), unread)
    finally:
        for key in taken:
            counts.release(key)


async def _fork_and_pump(session: MappedSession, hello: Hello, account: Account,
                         counts: SharedCounts, slots: tuple[int, int], held: int,
                         byte_slots: tuple[int, int], unread: bytes = b"") -> None:
    peer = session.peer
    assert peer is not None
    conn = session.conn
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    address = conn.peer_address
    audit = session.context.audit
    relay = EventRelay() if audit.observers else None  # the metrics see the worker's events
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        ours.close()
        _worker(session, hello, account, theirs, address, counts, (slots, held), byte_slots,
                relay)
    theirs.close()
    if relay is not None:
        relay.in_parent(audit.observers)
    session.worker = Worker(pid)
    log.info("session of %s runs as %s in worker %d", peer.name, account.name, pid)
    try:
        await _pump(conn.transport, ours, Connection(Role.CLIENT).send(hello) + unread)
    finally:
        if conn.link.lost is None:  # the pump took the transport: tell the framed side it is gone
            conn.link.connection_lost(None)
        await _reap(pid, session.context.kill_grace + 5)
        if relay is not None:
            relay.close()
        leaked = counts.value(held)
        if leaked:  # a worker that died with commands counted: give the counts back
            for slot in (*slots, held):
                counts.add(slot, -leaked)
        leaked = counts.value(byte_slots[1])
        if leaked:  # ...and the bytes it held
            for slot in byte_slots:
                counts.add(slot, -leaked)


async def _pump(tls: asyncio.Transport, sock: socket.socket, first: bytes) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    local, _ = await loop.connect_accepted_socket(lambda: _Pump(tls, done), sock=sock)
    local.write(first)  # the hello, replayed: the worker's session answers it
    pump = _Pump(local, done)
    pump.connection_made(tls)  # set_protocol does not call it: EOF from the client needs it
    tls.set_protocol(pump)
    tls.resume_reading()
    await done


async def _reap(pid: int, grace: float) -> None:
    """Wait for the worker (which ends when its socket closes); SIGKILL it after ``grace``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == 0 and loop.time() < deadline:
                await asyncio.sleep(0.05)
                continue
            if done == 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await loop.run_in_executor(None, os.waitpid, pid, 0)
        return


# --- the worker ---------------------------------------------------------------------------------


def _worker(session: MappedSession, hello: Hello, account: Account, sock: socket.socket,
            address: str, counts: SharedCounts, slots: tuple[tuple[int, int], int],
            byte_slots: tuple[int, int], relay: EventRelay | None) -> NoReturn:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, DRAIN_SIGNAL):
            signal.signal(sig, signal.SIG_DFL)
        keep = {0, 1, 2, sock.fileno(), session.context.audit.fileno(), counts.fd}
        if relay is not None:
            relay.in_worker(session.context.audit)
            keep.add(relay.write_fd)
        _forget_descriptors(keep)
        for name in PRELOAD:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        drop_privileges(account)
        os.environ.clear()
        # what a login gives the account (its HOME, USER, PATH...; of the server's, the locale
        # and the --pass-env names): the one rule of server/environment.py, as its uid sees it
        os.environ.update(login_environment(session.context.pass_env, server_env=_INHERITED))
        with contextlib.suppress(OSError):
            os.chdir(account.home)
        context = _worker_context(session.context, counts, slots, byte_slots)
        asyncio.events._set_running_loop(None)  # the parent's loop is not ours
        _own_child_watcher()
        asyncio.run(_serve(type(session), context, session.peer, sock, address))
        code = 0
    except BaseException:  # a worker never returns into the parent's stack
        with contextlib.suppress(BaseException):
            log.exception("worker for %s failed", account.name)
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)


def _worker_context(parent: Any, counts: SharedCounts, slots: tuple[tuple[int, int], int],
                    byte_slots: tuple[int, int]) -> Any:
    """The session context of a worker: its counts shared with the other workers, and a disk
    pool and fetch shares of its own (the parent's threads do not survive the fork, and their
    semaphores belong to the parent's event loop: inherited, the first file work would wait
    for ever)."""
    limits = parent.limits
    return dataclasses.replace(
        parent, admission=WorkerAdmission(parent.admission, counts, *slots),
        buffers=SharedByteBudget(limits.max_buffered_per_client, counts, *byte_slots),
        disk=DiskPool(limits.disk_threads, limits.disk_threads_per_client),
        fetches=Shares(limits.max_fetches_per_client))


def _own_child_watcher() -> None:
    """A child watcher of the worker's own (Python < 3.12 has watchers): the inherited one
    belongs to the parent's loop."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "set_child_watcher"):
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())


_INHERITED = dict(os.environ)  # the server's environment at start (locale, TZ are kept)


def _forget_descriptors(keep: set[int]) -> None:
    """Point every other descriptor at /dev/null: other clients' connections, the listening
    sockets and the parent's event loop stop being ours, while their numbers stay taken (the
    parent's objects we inherited may still close them)."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep or fd == null:
            continue
        with contextlib.suppress(OSError):
            os.dup2(null, fd, inheritable=False)
    os.close(null)


def drop_privileges(account: Account) -> None:
    """Become ``account`` for good: groups first, the user last; verified."""
    os.initgroups(account.name, account.gid)
    os.setgid(account.gid)
    os.setuid(account.uid)
    if os.getuid() != account.uid or os.geteuid() != account.uid or os.getegid() != account.gid:
        raise RuntimeError(f"could not become {account.name}")
    if account.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise RuntimeError(f"dropping to {account.name} is not permanent")


async def _serve(make: type[MappedSession], context: Any, peer: Any, sock: socket.socket,
                 address: str) -> None:
    from tether.net.framed import FramedProtocol

    loop = asyncio.get_running_loop()
    _, link = await loop.connect_accepted_socket(lambda: FramedProtocol(Role.SERVER), sock=sock)
    worker = make(context, link, peer=peer, address=address)
    draining: list[asyncio.Task[None]] = []

    def drain() -> None:
        if not draining:
            draining.append(loop.create_task(_drain(worker, context.drain)))

    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(worker.shutdown()))
    loop.add_signal_handler(DRAIN_SIGNAL, drain)
    await worker.serve()
    if worker.tasks:  # the commands' kill tasks: their grace period, so none outlives us
        await asyncio.wait(list(worker.tasks), timeout=context.kill_grace + 2)


async def _drain(session: MappedSession, seconds: float) -> None:
    """Wait up to ``seconds`` while ``session`` has an operation under way, then end it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while session.busy and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await session.shutdown()
