"""Many hosts at once: ``tether.connect_many(targets)`` and per-host results::

    async with tether.connect_many("@web", parallel=32, timeout=20) as fleet:
        results = await fleet.run("uptime")
        for host in results:
            print(host.name, host.kind, host.status, host.text)
        await fleet.put(["app.conf"], "/etc/app/")
        await fleet.get("/var/log/app.log", "logs")     # logs/HOST/app.log

Every host is worked on in its own task under one semaphore (``parallel``, default 64), each
under its own deadline (``timeout``: connect plus operation; the inventory's per-host ``timeout``
beats the fleet's default, an operation's own ``timeout=`` beats both). A host that cannot be
reached, refuses our identity, is not pinned, or runs out of time becomes a failed
:class:`HostResult` with a one-line error and a :attr:`HostResult.kind`; nothing a host does
stops the others, and no exception from one host escapes :meth:`Fleet.run` and friends.

Connections are opened on first use and kept for the next operation (``keep_connections``); the
CLI turns that off, so a run over thousands of hosts holds at most ``parallel`` sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.client.api import Connection, connect
from tether.client.options import (
    CONNECT_TIMEOUT,
    DEFAULT_PARALLEL,
    Confirm,
    ConnectOptions,
    options_of,
)
from tether.client.process import STDOUT, DecodedOutput, _feed
from tether.client.transfer_base import TransferResult
from tether.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    HostChanged,
    HostUnknown,
    NotAuthorized,
)
from tether.inventory import Target, load, resolve
from tether.syncing.common import SyncResult

# HostResult.kind: why a host did not succeed (or "ok")
OK, FAILED, TIMEOUT, UNREACHABLE, UNAUTHORIZED, UNTRUSTED, ERROR = (
    "ok", "failed", "timeout", "unreachable", "unauthorized", "untrusted", "error",
)

Output = Callable[[Target, int, bytes], None]
OnHostDone = Callable[["HostResult"], None]  # called as each host finishes
Operation = Callable[[Connection, Target, "HostResult"], Awaitable[None]]


@dataclass
class HostResult(DecodedOutput):
    """What happened on one host. ``ok`` only when the operation completed and (for run) the
    command exited 0; ``kind`` says which way it went otherwise."""

    target: Target
    ok: bool = False
    kind: str = ERROR
    status: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None
    duration: float = 0.0
    transfer: TransferResult | None = None
    encoding: str = "utf-8"
    sync: SyncResult | None = None

    @property
    def name(self) -> str:
        return self.target.name


    @property
    def resumed(self) -> list[tuple[str, int]]:
        """(path, offset) of each file this host's transfer resumed instead of restarting."""
        if self.transfer is None:
            return []
        return [(f.path, f.resumed_from) for f in self.transfer.resumed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (output decoded, undecodable bytes replaced)."""
        out: dict[str, Any] = {
            "host": self.name, "address": self.target.address, "port": self.target.port,
            "ok": self.ok, "kind": self.kind, "status": self.status, "error": self.error,
            "duration": round(self.duration, 6),
        }
        if self.sync is not None:
            out.update(self.sync.to_dict())
        elif self.transfer is not None:
            out.update(files=self.transfer.file_count,
                       bytes=self.transfer.bytes,
                       resumed=[{"path": path, "at": at} for path, at in self.resumed],
                       skipped=[{"path": s.path, "target": s.target}
                                for s in self.transfer.skipped])
        else:
            out.update(stdout=self.text, stderr=self.error_text)
        return out


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; the directories this call created, deepest first."""
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_if_empty(made: list[Path]) -> None:
    """Remove the directories :func:`_make_dirs` made, deepest first, while they are empty
    (a partial file kept for resume, or another host's directory, keeps them)."""
    for directory in made:
        try:
            directory.rmdir()
        except OSError:
            return


class FleetResult(Sequence[HostResult]):
    """Per-host results in target order; index by position or look up by host name."""

    def __init__(self, hosts: list[HostResult]) -> None:
        self.hosts = hosts

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, index: Any) -> Any:
        return self.hosts[index]

    def __iter__(self) -> Iterator[HostResult]:
        return iter(self.hosts)

    def by_name(self, name: str) -> HostResult:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def succeeded(self) -> list[HostResult]:
        return [h for h in self.hosts if h.ok]

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts if not h.ok]


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line message) for an error on one host."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT, "timed out"
    if isinstance(exc, NotAuthorized):
        return UNAUTHORIZED, str(exc) or "not authorized"
    if isinstance(exc, HostUnknown | HostChanged):
        return UNTRUSTED, str(exc)
    if isinstance(exc, AuthError):
        return UNAUTHORIZED, str(exc)
    if isinstance(exc, ConnectionFailed):
        return UNREACHABLE, str(exc) or exc.__class__.__name__
    return ERROR, str(exc) or exc.__class__.__name__


def local_dir_name(target: Target) -> str:
    """A directory name for one host's downloads: its name with anything unsafe replaced."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", target.name)
    return name if name.strip(".") else f"host_{name}"


class Fleet:
    """Connections to many tether servers, opened on demand; see the module docstring."""

    def __init__(self, targets: Sequence[Target], *, options: ConnectOptions | None = None,
                 home: str | os.PathLike[str] | None = None, accept_new: bool | None = None,
                 plaintext: bool | None = None, confirm: Confirm | None = None,
                 parallel: int = DEFAULT_PARALLEL, timeout: float | None = None,
                 connect_timeout: float | None = None, keep_connections: bool = True,
                 keepalive: float | None = None) -> None:
        """``options`` (or its fields as keywords) for every connection; a host's own port and
        keepalive from the inventory win. ``connect_timeout`` is ``options.timeout``."""
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.targets = list(targets)
        self.options = options_of(options, home=home, accept_new=accept_new,
                                  plaintext=plaintext, confirm=confirm, timeout=connect_timeout,
                                  keepalive=keepalive)
        self.parallel = parallel
        self.timeout = timeout
        self.keep_connections = keep_connections
        self._conns: dict[str, Connection] = {}

    @property
    def home(self) -> Path:
        return self.options.home_dir

    @property
    def confirm(self) -> Confirm | None:
        return self.options.confirm

    @confirm.setter
    def confirm(self, confirm: Confirm | None) -> None:
        self.options = dataclasses.replace(self.options, confirm=confirm)

    @property
    def connect_timeout(self) -> float:
        return self.options.timeout

    # --- operations ----------------------------------------------------------------------------

    async def connect(self, *, timeout: float | None = None, on_done: OnHostDone | None = None
                      ) -> FleetResult:
        """Open every connection now (otherwise the first operation does), reporting each."""

        async def nothing(conn: Connection, target: Target, result: HostResult) -> None:
            result.ok, result.kind = True, OK

        return await self._each(nothing, timeout, on_done)

    async def run(self, cmd: str | Sequence[str], *, input: bytes | None = None,
                  cwd: str | None = None, env: Mapping[str, str] | None = None,
                  timeout: float | None = None, remote_timeout: float | None = None,
                  on_output: Output | None = None, on_done: OnHostDone | None = None,
                  capture: bool = True) -> FleetResult:
        """Run ``cmd`` on every host. ``on_output(target, channel, bytes)`` sees output as it
        arrives; ``capture=False`` keeps none of it in the results (for streaming only).
        ``remote_timeout`` has the server kill the command's process group after that long."""

        async def one(conn: Connection, target: Target, result: HostResult) -> None:
            result.encoding = conn.server.encoding
            proc = await conn.start(cmd, cwd=cwd, env=env, timeout=remote_timeout,
                                    stdin=input is not None)
            feeder = asyncio.create_task(_feed(proc, input)) if input else None
            out: list[bytes] = []
            err: list[bytes] = []
            try:
                async for channel, chunk in proc:
                    if on_output is not None:
                        on_output(target, channel, chunk)
                    if capture:
                        (out if channel == STDOUT else err).append(chunk)
                info = await proc.wait()
            finally:
                if feeder is not None:
                    feeder.cancel()
                proc.abandon()
            result.stdout, result.stderr, result.status = b"".join(out), b"".join(err), info.status
            if info.timed_out:
                result.kind, result.error = TIMEOUT, "the command timed out and was killed"
            elif info.status == 0:
                result.ok, result.kind = True, OK
            else:
                result.kind, result.error = FAILED, f"exit status {info.status}"

        return await self._each(one, timeout, on_done)

    async def put(self, local: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                  remote: str, *, recursive: bool = False, force: bool = False,
                  rename: bool = False, resume: bool = True, timeout: float | None = None,
                  on_done: OnHostDone | None = None, safe_links: bool = False) -> FleetResult:
        """Upload the same files to every host (see :meth:`Connection.put`)."""

        async def one(conn: Connection, target: Target, result: HostResult) -> None:
            result.transfer = await conn.put(local, remote, recursive=recursive, force=force,
                                             rename=rename, resume=resume,
                                             safe_links=safe_links)
            result.ok, result.kind = True, OK

        return await self._each(one, timeout, on_done)

    async def get(self, remote: str | Sequence[str], local: str | os.PathLike[str], *,
                  recursive: bool = False, force: bool = False, rename: bool = False,
                  resume: bool = True, timeout: float | None = None,
                  on_done: OnHostDone | None = None, safe_links: bool = False) -> FleetResult:
        """Download from every host into ``local/HOST/`` (created), one directory per host, so
        that the same path on two hosts never lands on one local file."""

        async def one(conn: Connection, target: Target, result: HostResult) -> None:
            into = Path(local) / local_dir_name(target)
            made = _make_dirs(into)
            try:
                result.transfer = await conn.get(remote, into, recursive=recursive,
                                                 force=force, rename=rename, resume=resume,
                                                 safe_links=safe_links)
            except BaseException:
                _remove_if_empty(made)  # no empty local/HOST/ for a host that sent nothing
                raise
            result.ok, result.kind = True, OK

        return await self._each(one, timeout, on_done)

    async def sync(self, src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   dest: str | os.PathLike[str], *, timeout: float | None = None,
                   on_done: OnHostDone | None = None, **options: Any) -> FleetResult:
        """Push the same local tree to every host at once (see :meth:`Connection.sync`; a pull
        from several hosts would write one tree from many: use ``get``)."""
        if options.pop("pull", False):
            raise BadRequest("a sync from several hosts would merge their trees into one; "
                             "pull from one host at a time")
        from tether.client import syncs

        progress = options.pop("progress", None)
        sources = syncs.source_list(src)
        # the tree walked, and each small file read, once for every host
        shared = syncs.SharedListing(sources, options, syncs.SHARED_BYTES
                                     if len(self.targets) > 1 else 0, home=self.home)

        async def one(conn: Connection, target: Target, result: HostResult) -> None:
            result.sync = await syncs.push(conn, sources, os.fspath(dest), shared.opts,
                                           progress, shared=shared)
            if result.sync.changed:
                result.kind = ERROR
                result.error = (f"{len(result.sync.changed)} files changed while being read "
                                f"and were not stored (first: {result.sync.changed[0]})")
            else:
                result.ok, result.kind = True, OK

        try:
            return await self._each(one, timeout, on_done)
        finally:
            shared.close()

    # --- machinery -----------------------------------------------------------------------------

    async def _each(self, op: Operation, timeout: float | None, on_done: OnHostDone | None
                    ) -> FleetResult:
        gate = asyncio.Semaphore(self.parallel)

        async def guarded(target: Target) -> HostResult:
            async with gate:
                result = await self._one(target, op, self._deadline(target, timeout))
            if on_done is not None:
                on_done(result)
            return result

        return FleetResult(list(await asyncio.gather(*(guarded(t) for t in self.targets))))

    def _deadline(self, target: Target, timeout: float | None) -> float | None:
        """The operation's own timeout, else the host's inventory setting, else the fleet's."""
        for candidate in (timeout, target.timeout, self.timeout):
            if candidate is not None:
                return candidate
        return None

    async def _one(self, target: Target, op: Operation, deadline: float | None) -> HostResult:
        """One host, start to end; every failure becomes part of its result, never raised."""
        result = HostResult(target)
        started = time.monotonic()
        broken = True
        try:
            async with asyncio.timeout(deadline):
                conn = await self._connection(target)
                await op(conn, target, result)
            broken = False
        except Exception as exc:  # even a bug on one host must not stop the rest
            result.ok = False
            result.kind, result.error = classify(exc)
        finally:
            result.duration = time.monotonic() - started
            if broken or not self.keep_connections:
                await self._drop(target)
        return result

    async def _connection(self, target: Target) -> Connection:
        conn = self._conns.get(target.name)
        if conn is None or conn._failure is not None:
            conn = await connect(target.address, target.port, options=self.options,
                                 keepalive=target.keepalive or None, user=target.user)
            self._conns[target.name] = conn
        return conn

    async def _drop(self, target: Target) -> None:
        conn = self._conns.pop(target.name, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Close every open connection (the servers kill commands still running)."""
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect_many(
    targets: str | Iterable[str | Target],
    *,
    options: ConnectOptions | None = None,
    port: int | None = None,
    home: str | os.PathLike[str] | None = None,
    accept_new: bool | None = None,
    plaintext: bool | None = None,
    confirm: Confirm | None = None,
    parallel: int = DEFAULT_PARALLEL,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    keep_connections: bool = True,
    keepalive: float | None = None,
) -> Fleet:
    """A :class:`Fleet` over ``targets`` (``"@web"``, ``"a,b"``, names, addresses or
    :class:`~tether.inventory.Target` tuples), resolved against ``$TETHER_HOME/hosts.toml``.

    Nothing is connected yet: use ``async with`` (which closes every connection at the end) and
    call :meth:`Fleet.run`, :meth:`Fleet.put`, :meth:`Fleet.get` or :meth:`Fleet.connect`.
    ``timeout`` is the per-host deadline (connect plus operation) when neither the operation nor
    the host's inventory entry sets one; ``port`` applies to bare addresses only. The connect
    options are a :class:`~tether.client.options.ConnectOptions` or its fields as keywords
    (``connect_timeout`` is its ``timeout``).
    """
    opts = options_of(options, port=port, home=home, accept_new=accept_new,
                      plaintext=plaintext, confirm=confirm, timeout=connect_timeout,
                      keepalive=keepalive)
    resolved = resolve(targets, load(opts.home_dir), opts.port)
    return Fleet(resolved, options=opts, parallel=parallel, timeout=timeout,
                 keep_connections=keep_connections)


__all__ = ["CONNECT_TIMEOUT", "Fleet", "FleetResult", "HostResult", "OnHostDone", "classify",
           "connect_many"]
