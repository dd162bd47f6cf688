"""Fixtures for the file-transfer tests: real TLS on loopback, real files, real processes.

Nothing is mocked. Two identities are made once per session: one server identity shared by every
server these tests start (so the client's pinned ``known_hosts`` never sees a changed fingerprint
when a port is reused) and one client identity. Each test gets

- ``work``: a fresh directory on tmpfs (``/dev/shm`` when usable, else ``tmp_path``), removed at
  teardown after any file system mounted inside it is unmounted;
- ``rig`` / ``make_rig`` / ``api``: an in-process :class:`tether.server.listener.Server` on port
  0 with its own home (authorized list) and root, and an API connection to it;
- ``serve``: ``tether serve`` subprocesses (for kill -9), stopped by PID at teardown;
- ``mount_tmpfs``: small tmpfs mounts (root only), unmounted at teardown.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

import tether
from support import ServeProcess, start_serve
from tether.identity import AuthorizedClient, add_authorized, generate_identity
from tether.server.listener import Server, ServerConfig

from .helpers import ClientSpec, Identities, Rig, cli_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    base = tmp_path_factory.mktemp("transfer-ids")
    server = generate_identity(base / "server", "transfer-server", "server")
    client = generate_identity(base / "client", "transfer-client", "client")
    return Identities(base, server, base / "server", client, base / "client")


# --- directories and mounts ---------------------------------------------------------------------


def _tmpfs_base() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _unmount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        for _ in range(20):
            if subprocess.run(args, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)


def _mounted_below(path: Path) -> list[Path]:
    below = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = Path(line.split()[1].replace("\\040", " "))
            if point == path or path in point.parents:
                below.append(point)
    return sorted(below, key=lambda p: len(p.parts), reverse=True)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on tmpfs when possible (fast, and fsync costs nothing there)."""
    base = _tmpfs_base()
    path = Path(tempfile.mkdtemp(prefix="tether-transfer-", dir=base)) if base else tmp_path
    try:
        yield path
    finally:
        for point in _mounted_below(path):  # never remove files through a forgotten mount
            _unmount(point)
        if base:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mount_tmpfs(work: Path) -> Iterator[Callable[..., Path]]:
    """``mount_tmpfs(path, size="2m", ro=False)``: a small tmpfs (root only), unmounted at
    teardown."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "2m", ro: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size},mode=0755" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        _unmount(path)


# --- in-process servers -------------------------------------------------------------------------


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(ids: Identities, work: Path) -> AsyncIterator[RigFactory]:
    """``await make_rig(root=..., clients=[ClientSpec(...)])``: a server whose authorized list
    holds the session client (unconfined, every permission) and ``clients``."""
    servers: list[Server] = []

    async def make(root: Path | None = None, clients: Sequence[ClientSpec] = ()) -> Rig:
        n = len(servers)
        home = work / f"server-home{n}"
        root = root or work / "root"
        root.mkdir(parents=True, exist_ok=True)
        add_authorized(home, AuthorizedClient(ids.client.cert_der, "transfer-client"))
        for spec in clients:
            spec.home = work / f"client-{spec.name}"
            if not (spec.home / "id_key.pem").exists():
                generate_identity(spec.home, spec.name, "client")
            der = ssl.PEM_cert_to_DER_cert((spec.home / "id_cert.pem").read_text())
            add_authorized(home, AuthorizedClient(der, spec.name, spec.root, spec.permissions))
        server = Server(ServerConfig(home=home, port=0, root=root), ids.server)
        await server.start()
        servers.append(server)
        return Rig(server, home, root, ids.client_home)

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def rig(make_rig: RigFactory) -> Rig:
    return await make_rig()


@pytest.fixture
async def api(rig: Rig) -> AsyncIterator[tether.Connection]:
    """An API connection to ``rig`` as the session client."""
    async with rig.connect() as conn:
        yield conn


# --- ``tether serve`` subprocesses --------------------------------------------------------------


ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve(ids: Identities, work: Path) -> Iterator[ServeFactory]:
    """``serve(home=None, root=None, port=0)``: start ``tether serve`` with the session server
    identity (the session client authorized) and wait for its "listening on" line. Every process
    started here is stopped by PID at teardown."""
    started: list[ServeProcess] = []

    def start(home: Path | None = None, root: Path | None = None, port: int = 0
              ) -> ServeProcess:
        home = home or work / "serve-home"
        root = root or work / "serve-root"
        if not (home / "server_key.pem").exists():
            home.mkdir(parents=True, exist_ok=True)
            for name in ("server_key.pem", "server_cert.pem", "server_cert.name"):
                shutil.copy2(ids.server_home / name, home / name)
            add_authorized(home, AuthorizedClient(ids.client.cert_der, "transfer-client"))
        server = start_serve(home, root, work / f"serve{len(started)}.log", env=cli_env(home),
                             port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
