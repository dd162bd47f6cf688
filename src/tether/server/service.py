"""The server as a system service: what systemd (or any supervisor) asks of a daemon.

- :func:`notify`: sd_notify over ``$NOTIFY_SOCKET`` (a datagram to a Unix socket, ``@`` for the
  abstract namespace): READY=1 once listening, RELOADING=1 around a reload, STOPPING=1 on stop.
- :func:`inherited_sockets`: socket activation (``$LISTEN_FDS`` / ``$LISTEN_PID``, descriptors
  from 3), taken once and removed from the environment so no command inherits them.
- :class:`Lifecycle`: the signals. SIGHUP reloads (the configuration through a callback the CLI
  gives, then the authorized list and the server identity) without touching a connection;
  SIGTERM drains (no new connections, running commands and transfers, classic requests too,
  may finish for ``drain`` seconds, idle connections are closed at once); a second SIGTERM, or
  SIGINT, stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import fields, replace
from typing import TYPE_CHECKING

from tether.errors import ConfigError, TetherError
from tether.server.limits import Limits, derive

if TYPE_CHECKING:
    from tether.server.config import ServerConfig
    from tether.server.listener import Server
    from tether.server.session import Session

log = logging.getLogger("tether.server")

SD_LISTEN_FDS_START = 3
# Settings a running server cannot change: they name the sockets it listens on or its identity.
RESTART_ONLY = ("home", "host", "port", "plaintext", "classic", "discoverable", "metrics")
# Limits that sized something built at start (server/listener.py): they too need a restart.
RESTART_ONLY_LIMITS = ("disk_threads", "disk_threads_per_client", "max_fetches_per_client",
                       "reserved_descriptors")


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ...) to the service manager; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", address, exc)
        return False
    return True


def inherited_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed us (socket activation), or none.

    Honoured only when ``$LISTEN_PID`` is this process (the variables may have been inherited
    by accident); the variables are removed, and the descriptors made close-on-exec. A
    descriptor that is not a listening TCP socket is a ConfigError (a unit written by hand).
    """
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} is not a socket") from exc
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                sock.type != socket.SOCK_STREAM or \
                not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} is not a listening TCP socket "
                              f"(tether.socket needs ListenStream=[ADDR:]PORT)")
        sockets.append(sock)
    return sockets


def _classic_busy(server: Server) -> int:
    """Classic requests being served (a classic connection between requests is idle)."""
    return server.classic.busy if server.classic is not None else 0


class Lifecycle:
    """Signals for a running :class:`~tether.server.listener.Server`: reload, drain, stop."""

    def __init__(self, server: Server, reload: Callable[[], ServerConfig] | None = None,
                 configured: ServerConfig | None = None) -> None:
        self.server = server
        self.reload_config = reload
        # the settings as written (port 0 stays 0), to tell what a reload changes
        self.configured = configured or replace(server.config)
        self._stop = asyncio.Event()
        self._now = asyncio.Event()
        self.draining = False

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGHUP: self.reload, signal.SIGTERM: self.terminate,
                    signal.SIGINT: self.interrupt}
        for sig, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)

    def terminate(self) -> None:
        """SIGTERM: drain; a second one: stop now."""
        if self.draining:
            log.warning("second SIGTERM: stopping now")
            self._now.set()
        self.draining = True
        self._stop.set()

    def interrupt(self) -> None:
        """SIGINT (Ctrl-C at a terminal): stop now, as before draining existed."""
        self._now.set()
        self._stop.set()

    async def run(self) -> None:
        """Until a signal stops the server: then drain (unless told to stop now) and close."""
        await self._stop.wait()
        notify("STOPPING=1")
        if not self._now.is_set():
            await self.drain(self.server.config.drain)
        await self.server.close()

    # --- drain ---------------------------------------------------------------------------------

    async def drain(self, seconds: float) -> None:
        """Stop accepting; close idle connections; wait for busy ones up to ``seconds``."""
        server = self.server
        server.stop_accepting()
        busy = sum(1 for s in server.sessions if s.busy or s.worker) + _classic_busy(server)
        log.info("draining: no new connections; %d connection(s) busy, waiting up to %gs",
                 busy, seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        closing: set[Session] = set()
        tasks: list[asyncio.Task[None]] = []
        while (server.sessions or _classic_busy(server)) and not self._now.is_set():
            for session in list(server.sessions):
                if session in closing:
                    continue
                if session.worker is not None:  # served as another account: it drains itself
                    closing.add(session)
                    session.worker.drain()
                elif not session.busy:
                    closing.add(session)
                    tasks.append(loop.create_task(session.shutdown()))
            left = deadline - loop.time()
            if left <= 0:
                log.warning("drain time is up: ending %d busy connection(s)",
                            len(server.sessions) + _classic_busy(server))
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), min(0.1, left))
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    # --- reload --------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: the configuration file, then the trust files and the identity."""
        notify("RELOADING=1")
        try:
            if self.reload_config is not None:
                try:
                    new = self.reload_config()
                except (TetherError, OSError, ValueError) as exc:
                    log.error("reload refused, the running configuration is kept: %s", exc)
                    return
                self.apply(new)
            self.server.reload_trust()
            log.info("reloaded: configuration, authorized clients and server identity")
        finally:
            notify("READY=1")

    def apply(self, new: ServerConfig) -> None:
        """Take every setting a running server can change; name those that need a restart."""
        config = self.server.config
        changed = []
        for f in fields(config):
            new_value = getattr(new, f.name)
            if getattr(self.configured, f.name) == new_value:
                continue
            if f.name in RESTART_ONLY:
                log.warning("%s changed in the configuration: it takes effect at the next "
                            "restart", f.name)
                continue
            if f.name == "limits":
                new_value = self._limits(self.configured.limits, new_value)
                setattr(self.configured, f.name, new_value)
                new_value = self._derived(new_value)
            else:
                setattr(self.configured, f.name, new_value)
            setattr(config, f.name, new_value)
            changed.append(f.name)
        self.server.admission.limits = config.limits
        # sessions from now on see the new settings; those already up keep what they started with
        self.server.context = replace(
            self.server.context, limits=config.limits, root=config.root, name=config.name,
            encoding=config.encoding, kill_grace=config.kill_grace, drain=config.drain,
            pass_env=config.pass_env)
        self._reopen_audit()
        if changed:
            log.info("configuration changed: %s", ", ".join(changed))

    @staticmethod
    def _limits(old: Limits, new: Limits) -> Limits:
        """``new``, but with the old value of each limit that sized something built at start
        (the disk threads, fetch shares, the descriptor reserve): those need a restart."""
        kept = {}
        for name in RESTART_ONLY_LIMITS:
            if getattr(old, name) != getattr(new, name):
                log.warning("%s changed in the configuration: it takes effect at the next "
                            "restart", name.replace("_", "-"))
                kept[name] = getattr(old, name)
        return replace(new, **kept)

    def _derived(self, limits: Limits) -> Limits:
        """The limits with the derived ones (0) resolved again, as at start, and the budgets
        that follow them updated."""
        server = self.server
        derived = derive(limits)
        if server.descriptors is not None:
            server.descriptors.total = max(1, derived.operation_descriptors)
            server.descriptors.per_client = max(
                1, min(derived.limits.max_descriptors_per_client, server.descriptors.total))
        server.refusals.interval = derived.limits.refusal_log_interval
        if server.context.buffers is not None:  # (0: paused identities resume)
            server.context.buffers.per_client = derived.limits.max_buffered_per_client
        log.info("limits: %s", derived.note)
        return derived.limits

    def _reopen_audit(self) -> None:
        """Reopen the audit log (its path may have changed; logrotate moved it away)."""
        server = self.server
        try:
            server.audit.reopen(server.config.audit)
        except OSError as exc:
            log.error("cannot open the audit log %s, keeping the old one: %s",
                      server.config.audit, exc)
