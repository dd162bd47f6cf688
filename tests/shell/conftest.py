"""Fixtures for the interactive-shell tests: real ``tether serve`` processes, real terminals.

Nothing is mocked. One server identity and three client identities are made per session:
``client`` (every permission), ``exec_only`` (permission ``exec`` alone) and nothing else. One
``tether serve`` subprocess is shared by the session (``server``); a test that kills its server
gets its own from ``own_server``. Both are stopped by PID at teardown. Clients pin the server with
``--accept-new`` (CLI) or ``accept_new=True`` (API).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tether
from support import ServeProcess
from tether.identity import AuthorizedClient, add_authorized, generate_identity

from .helpers import BASH_PROFILE, HOST, Terminal, start_login_serve


@dataclass
class Identities:
    base: Path
    server_home: Path  # the server identity and its authorized list
    client_home: Path  # authorized with every permission
    exec_home: Path  # authorized with {"exec"} only
    remote_home: Path  # HOME of the remote login shells (a fixed prompt)


@pytest.fixture(scope="session")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    base = tmp_path_factory.mktemp("shell")
    server_home, client_home, exec_home = base / "server", base / "client", base / "exec"
    generate_identity(server_home, "shell-server", "server")
    client = generate_identity(client_home, "shell-client", "client")
    exec_only = generate_identity(exec_home, "exec-only", "client")
    add_authorized(server_home, AuthorizedClient(client.cert_der, "shell-client"))
    add_authorized(server_home, AuthorizedClient(exec_only.cert_der, "exec-only",
                                                 permissions=frozenset({"exec"})))
    remote_home = base / "remote-home"
    remote_home.mkdir()
    (remote_home / ".bash_profile").write_text(BASH_PROFILE)
    return Identities(base, server_home, client_home, exec_home, remote_home)


@pytest.fixture(scope="session")
def shared_server(ids: Identities) -> Iterator[ServeProcess]:
    with start_login_serve(ids.server_home, ids.base / "root", ids.base / "serve.log",
                           ids.remote_home) as server:
        yield server


@pytest.fixture
def server(shared_server: ServeProcess) -> ServeProcess:
    """The shared server, checked alive (a test that crashed it fails on its own)."""
    return shared_server.checked()


@pytest.fixture
def own_server(ids: Identities, tmp_path: Path) -> Iterator[Callable[[], ServeProcess]]:
    """``own_server()``: a ``tether serve`` of this test alone (same identity, own port)."""
    started: list[ServeProcess] = []

    def start() -> ServeProcess:
        home = tmp_path / f"server{len(started)}"
        shutil.copytree(ids.server_home, home)
        server = start_login_serve(home, tmp_path / "root", tmp_path / f"serve{len(started)}.log",
                             ids.remote_home)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


TerminalFactory = Callable[..., Terminal]


@pytest.fixture
def terminal(server: ServeProcess, ids: Identities) -> Iterator[TerminalFactory]:
    """``terminal(*args, home=None, port=None, term=..., rows=24, cols=160, opts=())``:
    ``tether shell [opts] HOST [args]`` in a real pseudo-terminal (see
    :class:`helpers.Terminal`); closed at teardown."""
    opened: list[Terminal] = []

    def open_terminal(*args: str, home: Path | None = None, port: int | None = None,
                      **kwargs: Any) -> Terminal:
        term = Terminal(port or server.port, home or ids.client_home, args, **kwargs)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


@pytest.fixture
async def api(server: ServeProcess, ids: Identities) -> AsyncIterator[tether.Connection]:
    """An API connection to the shared server with every permission."""
    async with tether.connect(HOST, server.port, home=ids.client_home,
                              accept_new=True) as conn:
        yield conn
