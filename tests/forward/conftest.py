"""Fixtures for forwarding: a ``tether serve`` with an audit log (and servers with permits),
local services on loopback (an echo server honouring half-close, ``python -m http.server``),
and a way to read the audit log's forward records."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Client, authorize, cli_env, pin, start_server
from support import ServeProcess, stop_process, wait_until


@dataclass
class Served:
    server: ServeProcess
    client: Client
    audit: Path

    def records(self, event: str) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        lines = self.audit.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def forward_records(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The audit's forward records, once at least ``count`` were written."""
        wait_until(lambda: len(self.records("forward")) >= count, timeout)
        return self.records("forward")


def serve_with(tmp: Path, client_home: Path, *extra: str, root_client: Path | None = None
               ) -> Iterator[Served]:
    home = tmp / "server"
    authorize(home, client_home)
    audit = tmp / "audit.log"
    with start_server(home, tmp / "root", tmp / "server.log", "--audit", str(audit),
                      *extra) as server:
        pin(client_home, server.port, server.fingerprint)
        yield Served(server, Client(server, client_home), audit)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, client_home: Path) -> Iterator[Served]:
    """A server with an audit log and the default policy (forwarding anywhere)."""
    yield from serve_with(tmp_path_factory.mktemp("fwd"), client_home)


# --- local services -----------------------------------------------------------------------------


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything; at end of input, half-close (the peer still reads the rest)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024)
    async with server:
        yield server.sockets[0].getsockname()[1]


@dataclass
class Http:
    port: int
    root: Path


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    """``python -m http.server`` on loopback, serving a directory with a 3 MiB file."""
    root = tmp_path_factory.mktemp("www")
    (root / "index.html").write_text("<h1>tether forward</h1>\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * (3 * 4096))
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cli_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        found = re.search(r"port (\d+)", line)
        assert found, line
        yield Http(int(found.group(1)), root)
    finally:
        stop_process(proc)


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                          timeout=timeout)
