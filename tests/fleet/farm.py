"""Fifty tether servers on 127.0.0.2–127.0.0.51, in-process, in one event loop of their own.

The servers run in a background thread's loop so that tests may drive them from pytest's loop
(the API) or block on a ``tether`` subprocess (the CLI) without ever starving them. Every server
listens on the same port number (so one ``tether discover 127.0.0.0/26 --port P`` reaches them
all), has its own home, identity, authorized list and root, and is named ``nNN`` after the last
byte of its address.

Roles, fixed for the session (:class:`Roles`): the first ``DISCOVERABLE`` servers answer UDP
probes; a *slow* marker file sits in the roots of ``SLOW``; the second client identity ("b") is
not authorized on ``UNAUTHORIZED_B`` and has not pinned ``UNTRUSTED_B``. ``STOPPED`` are the ones
a test stops (and restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from support import TETHER
from tether.identity import (
    AuthorizedClient,
    Identity,
    add_authorized,
    add_known_host,
    generate_identity,
)
from tether.inventory import Host, Inventory, save
from tether.server.listener import Server, ServerConfig

T = TypeVar("T")

FIRST, COUNT = 2, 50
ADDRESSES = [f"127.0.0.{n}" for n in range(FIRST, FIRST + COUNT)]
DISCOVERABLE = ADDRESSES[:30]
STOPPED = ["127.0.0.42", "127.0.0.43"]
UNAUTHORIZED_B = ["127.0.0.44", "127.0.0.45"]
UNTRUSTED_B = ["127.0.0.46", "127.0.0.47"]
SLOW = ["127.0.0.48", "127.0.0.49"]
SLOW_COMMAND = "if [ -e slow ]; then sleep 30; fi; echo fine"
CLI_TIMEOUT = 60.0


def name_of(address: str) -> str:
    return f"n{int(address.rsplit('.', 1)[1]):02d}"


@dataclass
class Node:
    address: str
    home: Path
    root: Path
    identity: Identity
    server: Server | None = None

    @property
    def name(self) -> str:
        return name_of(self.address)

    @property
    def discoverable(self) -> bool:
        return self.address in DISCOVERABLE


@dataclass
class Farm:
    """The servers, their loop and thread, and the client homes that reach them."""

    base: Path
    port: int = 0
    nodes: dict[str, Node] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    @property
    def client_a(self) -> Path:
        """Authorized on every server, every server pinned."""
        return self.base / "client-a"

    @property
    def client_b(self) -> Path:
        """Not authorized on UNAUTHORIZED_B, UNTRUSTED_B not pinned."""
        return self.base / "client-b"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` in the farm's loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- set-up --------------------------------------------------------------------------------

    def prepare(self) -> None:
        ids = {who: generate_identity(self.base / f"client-{who}", f"fleet-{who}")
               for who in ("a", "b")}
        for address in ADDRESSES:
            home = self.base / "servers" / name_of(address)
            root = self.base / "roots" / name_of(address)
            root.mkdir(parents=True)
            if address in SLOW:
                (root / "slow").write_text("")
            identity = generate_identity(home, name_of(address), "server")
            for who, client in ids.items():
                if not (who == "b" and address in UNAUTHORIZED_B):
                    add_authorized(home, AuthorizedClient(client.cert_der, client.name))
            self.nodes[address] = Node(address, home, root, identity)
        inventory = Inventory()
        for address in ADDRESSES:
            groups = ("farm", "disc") if address in DISCOVERABLE else ("farm",)
            inventory.add(Host(name_of(address), address, 7722, groups))
        self._inventory = inventory

    def pin(self) -> None:
        """Both clients' known_hosts and inventories (done once the port is known)."""
        for who, home in (("a", self.client_a), ("b", self.client_b)):
            for node in self.nodes.values():
                if not (who == "b" and node.address in UNTRUSTED_B):
                    add_known_host(home, node.address, self.port, node.identity.fingerprint)
            inv = Inventory({n: Host(h.name, h.address, self.port, h.groups)
                             for n, h in self._inventory.hosts.items()})
            save(inv, home)

    def start(self) -> None:
        self.prepare()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fleet-farm",
                                       daemon=True)
        self.thread.start()
        for _attempt in range(10):
            self.port = _free_port(ADDRESSES[0])
            try:
                self.call(self._start_all(ADDRESSES))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                self.call(self._stop_all(ADDRESSES))
        else:
            raise RuntimeError("no port free on every farm address")
        self.pin()

    async def _start_all(self, addresses: Iterable[str]) -> None:
        results = await asyncio.gather(*(self._start_one(a) for a in addresses),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _start_one(self, address: str) -> None:
        node = self.nodes[address]
        config = ServerConfig(home=node.home, host=address, port=self.port, root=node.root,
                              name=node.name, discoverable=node.discoverable, kill_grace=0.2)
        server = Server(config, node.identity)
        await server.start()
        node.server = server

    async def _stop_all(self, addresses: Iterable[str]) -> None:
        servers = []
        for address in addresses:
            node = self.nodes[address]
            if node.server is not None:
                servers.append(node.server)
                node.server = None
        await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)

    def stop_nodes(self, addresses: Iterable[str]) -> None:
        self.call(self._stop_all(addresses))

    def start_nodes(self, addresses: Iterable[str]) -> None:
        self.call(self._start_all(addresses))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop_all(ADDRESSES))
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
        self.loop.close()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --- the CLI ------------------------------------------------------------------------------------




def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", TETHER_HOME=str(home), NO_COLOR="1")
    return env


def tether(*args: str, home: Path, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
           ) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` to completion, stdin /dev/null, output captured as text."""
    return subprocess.run([*TETHER, *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(home), stdin=subprocess.DEVNULL, cwd=cwd)


async def atether(*args: str, home: Path, cwd: Path | None = None,
                  timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """:func:`tether` from a coroutine (pytest's loop keeps running meanwhile)."""
    return await asyncio.to_thread(tether, *args, home=home, cwd=cwd, timeout=timeout)
