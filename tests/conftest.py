"""Shared fixtures: real identities made with the real CLI, real ``tether serve`` subprocesses.

Nothing here is mocked. A server is a ``tether serve -p 0`` subprocess whose port and
fingerprint are read from its "listening on" line (its stderr goes to a log file, so a chatty
server can never block on a full pipe); it is stopped by PID at teardown, SIGTERM then SIGKILL.

Remote commands that a test wants to find again carry a marker: the environment variable
``TETHER_E2E_MARK`` (set with ``--env`` or ``env=``), which every child and grandchild inherits.
:class:`Marker` finds them with psutil; the marker is unique per test, so a test only ever looks
at (and, as a last resort at teardown, kills) processes it caused to exist.

Test modules reach these helpers through fixtures (types under ``TYPE_CHECKING`` only): another
``conftest.py`` under tests/ would shadow the bare module name ``conftest`` at import time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

import tether
from support import TETHER, ServeProcess, start_serve, stop_process, wait_until
from tether.client.api import Connection
from tether.identity import Identity, host_key, known_hosts_path, load_identity

HOST = "127.0.0.1"
MARK_VAR = "TETHER_E2E_MARK"
SESSION_TAG = f"tether-e2e-{uuid.uuid4().hex[:8]}"
CLI_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: long-running end-to-end tests (deselect with -m 'not slow')"
    )


# --- running the CLI ----------------------------------------------------------------------------




def cli_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for a CLI subprocess: UTF-8 locale, no debug, our TETHER_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.pop("PYTHONIOENCODING", None)
    if home is not None:
        env["TETHER_HOME"] = str(home)
    env.update(extra)
    return env


def tether_cli(
    *args: str, home: Path | None = None, input: bytes | None = None,
    timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None, cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one ``tether`` command to completion, capturing bytes (stdin /dev/null by default);
    ``env`` adds variables to :func:`cli_env`."""
    return subprocess.run(
        [*TETHER, *args], input=input, capture_output=True, timeout=timeout,
        env=cli_env(home, **(env or {})),
        stdin=None if input is not None else subprocess.DEVNULL, cwd=cwd,
    )


def keygen(home: Path, name: str) -> Identity:
    """Create a client identity with ``tether keygen``."""
    done = tether_cli("keygen", "--name", name, home=home)
    assert done.returncode == 0, done.stderr
    return load_identity(home)


def authorize(server_home: Path, client_home: Path) -> None:
    """Authorize a client with its ``tether id`` line, as an admin would."""
    line = tether_cli("id", home=client_home)
    assert line.returncode == 0, line.stderr
    done = tether_cli("authorize", line.stdout.decode().strip(), home=server_home)
    assert done.returncode == 0, done.stderr
    assert b"authorized" in done.stdout


def pin(client_home: Path, port: int, fp: str) -> None:
    """Record a server's fingerprint in known_hosts, replacing an older line for that port."""
    path = known_hosts_path(client_home)
    key = host_key(HOST, port)
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.split()[:1] != [key]]
    path.write_text("".join(f"{line}\n" for line in [*kept, f"{key} {fp}"]))


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Marker:
    """A unique marker for one test's remote processes: pass :attr:`opts` to ``tether run`` or
    :attr:`env` to the API, then find every process that inherited it in its environment."""

    value: str = field(default_factory=lambda: f"{SESSION_TAG}-{uuid.uuid4().hex[:12]}")

    @property
    def env(self) -> dict[str, str]:
        return {MARK_VAR: self.value}

    @property
    def opts(self) -> list[str]:
        return ["--env", f"{MARK_VAR}={self.value}"]

    def _carried_by(self, proc: psutil.Process) -> bool:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False  # dead; only its parent's wait() is missing
            marked: bool = proc.environ().get(MARK_VAR) == self.value
        except (psutil.Error, OSError):
            return False
        return marked

    def processes(self) -> list[psutil.Process]:
        """Live processes whose environment carries the marker (never the local client, whose
        command line merely mentions it)."""
        me = os.getpid()
        return [p for p in psutil.process_iter() if p.pid != me and self._carried_by(p)]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[psutil.Process]:
        """Wait until at least ``count`` marked processes run; fails the test if they don't."""
        found: list[psutil.Process] = []

        def enough() -> bool:
            nonlocal found
            found = self.processes()
            return len(found) >= count

        assert wait_until(enough, timeout, interval=0.1), f"only {len(found)} of {count} started"
        return found

    def survivors(self, timeout: float) -> list[str]:
        """Marked processes still alive after waiting up to ``timeout`` s for all to end."""
        wait_until(lambda: not self.processes(), timeout, interval=0.1)
        found = []
        for p in self.processes():
            with contextlib.suppress(psutil.Error, OSError):
                found.append(f"{p.pid} pgid={os.getpgid(p.pid)} {' '.join(p.cmdline())}")
        return found

    def kill(self) -> None:
        """Last-resort cleanup: only processes that inherited this test's unique marker."""
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                p.kill()


# --- servers and clients ------------------------------------------------------------------------


def start_server(
    home: Path, root: Path, log: Path, *extra: str, port: int = 0,
    env: dict[str, str] | None = None,
) -> ServeProcess:
    """Start ``tether serve`` as ``home`` in its own session and wait until it listens
    (``env``: variables added to the server's environment)."""
    return start_serve(home, root, log, *extra, env=cli_env(**(env or {})), port=port,
                       new_session=True)


@dataclass
class Client:
    """The tether CLI and API as one client identity sees one server. Background clients
    started with :meth:`popen` are stopped by PID when the test ends."""

    server: ServeProcess
    home: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def argv(self, *command: str, opts: Sequence[str] = ()) -> list[str]:
        """The ``tether run`` command line for ``command`` on this client's server."""
        return [*TETHER, "run", "-p", str(self.port), *opts, HOST, "--", *command]

    def env(self) -> dict[str, str]:
        """The environment the client runs in (its TETHER_HOME, a UTF-8 locale)."""
        return cli_env(self.home)

    def run(
        self, *command: str, opts: Sequence[str] = (), input: bytes | None = None,
        timeout: float = CLI_TIMEOUT, **kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """``tether run`` to completion, output captured (stdin /dev/null unless ``input``)."""
        if input is None:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            self.argv(*command, opts=opts), input=input, capture_output=True, timeout=timeout,
            env=self.env(), **kwargs,
        )

    def popen(self, *command: str, opts: Sequence[str] = (), **kwargs: Any
              ) -> subprocess.Popen[bytes]:
        """``tether run`` in the background (stdin /dev/null unless given)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(*command, opts=opts), env=self.env(), **kwargs)
        self.started.append(proc)
        return proc

    def connect(self, **kwargs: Any) -> tether.connect:
        """``tether.connect`` to this client's server (use with ``async with``)."""
        return tether.connect(HOST, self.port, home=self.home, **kwargs)

    def other(self, *, server: ServeProcess | None = None, home: Path | None = None
              ) -> Client:
        """The same kind of client for another server or with another identity."""
        return Client(server or self.server, home or self.home)

    def stop_all(self) -> None:
        for proc in self.started:
            stop_process(proc, grace=1.0)  # a client forwards SIGTERM; don't wait long


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def client_home(e2e_dir: Path) -> Path:
    """An authorized client identity, made with ``tether keygen``."""
    home = e2e_dir / "client"
    keygen(home, "e2e-client")
    return home


@pytest.fixture(scope="session")
def shared_server(e2e_dir: Path, client_home: Path) -> Iterator[ServeProcess]:
    """One ``tether serve`` for the session (it creates its identity on first start), with the
    client authorized through ``tether authorize`` and the server pinned in its known_hosts."""
    home = e2e_dir / "server"
    authorize(home, client_home)
    with start_server(home, e2e_dir / "root", e2e_dir / "server.log") as server:
        pin(client_home, server.port, server.fingerprint)
        yield server


@pytest.fixture
def server(shared_server: ServeProcess) -> ServeProcess:
    """The shared server, checked alive: a test that crashed it shows up as its own failure."""
    return shared_server.checked()


@pytest.fixture
def client(server: ServeProcess, client_home: Path) -> Iterator[Client]:
    """The authorized client of the shared server."""
    c = Client(server, client_home)
    yield c
    c.stop_all()


@pytest.fixture
async def conn(client: Client) -> AsyncIterator[Connection]:
    """An API connection to the shared server."""
    async with client.connect() as connection:
        yield connection


@pytest.fixture
def mark() -> Iterator[Marker]:
    """A marker for this test's remote processes; any left over are killed at teardown."""
    marker = Marker()
    yield marker
    marker.kill()


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """:func:`tether_cli`: run any ``tether`` subcommand to completion."""
    return tether_cli


ClientHomeFactory = Callable[..., Path]


@pytest.fixture
def make_client_home(tmp_path: Path, shared_server: ServeProcess) -> ClientHomeFactory:
    """``make_client_home(dirname, authorized=False, name=dirname)``: a fresh identity made with
    ``tether keygen``, authorized on the shared server only if asked; it has pinned no server."""

    def make(dirname: str, authorized: bool = False, name: str | None = None) -> Path:
        home = tmp_path / dirname
        keygen(home, name or dirname)
        if authorized:
            authorize(shared_server.home, home)
        return home

    return make


ServerFactory = Callable[..., ServeProcess]


@pytest.fixture
def make_server(tmp_path: Path, client_home: Path) -> Iterator[ServerFactory]:
    """``make_server(*serve_args, home=None, port=0, pinned=True, env=None)``: extra servers,
    each with the shared client authorized (and pinned unless ``pinned=False``), ``env`` added
    to the server's environment; stopped at teardown."""
    started: list[ServeProcess] = []

    def make(*extra: str, home: Path | None = None, port: int = 0, pinned: bool = True,
             env: dict[str, str] | None = None) -> ServeProcess:
        home = home or tmp_path / f"server{len(started)}"
        if not (home / "authorized").exists():
            authorize(home, client_home)
        log = tmp_path / f"server{len(started)}.log"
        server = start_server(home, tmp_path / "root", log, *extra, port=port, env=env)
        started.append(server)
        if pinned:
            pin(client_home, server.port, server.fingerprint)
        return server

    yield make
    for server in started:
        server.stop()
