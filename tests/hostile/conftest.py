"""Fixtures for the hostile-input and fault tests: an in-process server with throwaway
identities, and a way to connect to it (directly or through the fault proxy)."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.identity import AuthorizedClient, Identity, add_authorized, generate_identity
from tether.server.limits import Limits
from tether.server.listener import Server, ServerConfig


@dataclass
class Setup:
    server: Server
    server_id: Identity
    client_id: Identity
    client_home: Path
    root: Path

    @property
    def port(self) -> int:
        return self.server.port


async def make_setup(tmp: Path, limits: Limits | None = None,
                     audit: Path | None = None) -> Setup:
    server_home, client_home, root = tmp / "server", tmp / "client", tmp / "root"
    root.mkdir()
    server_id = generate_identity(server_home, "server", "server")
    client_id = generate_identity(client_home, "client", "client")
    add_authorized(server_home, AuthorizedClient(client_id.cert_der, "client"))
    config = ServerConfig(home=server_home, port=0, root=root, limits=limits or Limits(),
                          audit=audit, kill_grace=0.5)
    server = Server(config, server_id)
    await server.start()
    return Setup(server, server_id, client_id, client_home, root)


@pytest.fixture(autouse=True, scope="session")
def _enough_descriptors() -> None:
    """Client and server share this process: allow both their sockets."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = await make_setup(tmp_path)
    try:
        yield s
    finally:
        await s.server.close()
