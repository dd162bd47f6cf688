"""Requests end to end: empty commands, many runs on one connection, the sync facade, --cwd and
--env."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

import tether
from tether.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from conftest import Client
    from support import ServeProcess
    from tether.client.api import Connection

CONCURRENT = 20


# --- empty commands -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[""], ["   "], []])
def test_cli_empty_command_fails_at_once(client: Client, command: list[str]) -> None:
    done = client.run(*command, timeout=30)
    assert done.returncode not in (0, 255)
    assert b"empty command" in done.stderr
    assert done.stderr.count(b"\n") == 1


@pytest.mark.parametrize("command", ["", "  \t", [], [""]])
async def test_api_empty_command_fails_at_once(conn: Connection, command: str | list[str]
                                               ) -> None:
    with pytest.raises(BadRequest, match="empty command"):
        await asyncio.wait_for(conn.run(command), 10)
    assert (await conn.run("echo after")).stdout == b"after\n"  # the connection lives on


# --- many at once -------------------------------------------------------------------------------


async def test_api_concurrent_runs_over_one_connection(conn: Connection) -> None:
    """Each run reports when it slept; all the sleeps overlap in time (a proof that needs no
    timing bound, so it holds on a loaded machine), and the outputs stay with their runs."""
    clock = "$(date +%s.%N)"
    started = time.monotonic()
    results = await asyncio.gather(
        *(conn.run(f"a={clock}; sleep 1; echo {n} $a {clock}") for n in range(CONCURRENT))
    )
    elapsed = time.monotonic() - started
    assert all(r.status == 0 for r in results)
    rows = [r.stdout.split() for r in results]
    assert [int(row[0]) for row in rows] == list(range(CONCURRENT))
    begins, ends = [float(row[1]) for row in rows], [float(row[2]) for row in rows]
    assert max(begins) < min(ends), "not all runs were running at once"
    assert elapsed < CONCURRENT * 1.0 / 2, f"{elapsed:.1f} s: the runs did not overlap"


async def test_api_concurrent_streams_keep_their_output_apart(conn: Connection) -> None:
    commands = [f"for i in $(seq 1 2000); do echo {n}-$i; done" for n in range(8)]
    results = await asyncio.gather(*(conn.run(c) for c in commands))
    for n, result in enumerate(results):
        assert result.stdout == b"".join(f"{n}-{i}\n".encode() for i in range(1, 2001))


def test_sync_connection(client: Client) -> None:
    with tether.SyncConnection("127.0.0.1", client.port, home=client.home) as conn:
        assert conn.server.fingerprint == client.server.fingerprint
        first = conn.run("echo one; echo two >&2; exit 3")
        second = conn.run(["cat"], input=b"piped")
    assert (first.status, first.stdout, first.stderr) == (3, b"one\n", b"two\n")
    assert (second.status, second.stdout) == (0, b"piped")


def test_sync_connection_raises_remote_errors(client: Client) -> None:
    with tether.SyncConnection("127.0.0.1", client.port, home=client.home) as conn:
        with pytest.raises(BadRequest):
            conn.run("")
        assert conn.run("true").ok


# --- --cwd and --env ----------------------------------------------------------------------------


@pytest.fixture
def subdir(server: ServeProcess) -> str:
    (server.root / "sub dir").mkdir(exist_ok=True)
    return "sub dir"


def test_cli_cwd(client: Client, server: ServeProcess, subdir: str) -> None:
    done = client.run("pwd", opts=["--cwd", subdir])
    assert (done.returncode, done.stdout) == (0, f"{server.root / subdir}\n".encode())


def test_cli_default_cwd_is_the_server_root(client: Client, server: ServeProcess) -> None:
    assert client.run("pwd").stdout == f"{server.root}\n".encode()


def test_cli_missing_cwd_is_a_clear_error(client: Client) -> None:
    done = client.run("pwd", opts=["--cwd", "no-such-dir"])
    assert done.returncode not in (0, 255)
    assert done.stdout == b""
    assert b"no such directory" in done.stderr
    assert b"no-such-dir" in done.stderr


def test_cli_env(client: Client) -> None:
    done = client.run('printf "%s|%s" "$GREETING" "$EMPTY"',
                      opts=["--env", "GREETING=hello world", "--env", "EMPTY="])
    assert (done.returncode, done.stdout) == (0, b"hello world|")


def test_cli_env_without_equals_is_rejected(client: Client) -> None:
    done = client.run("true", opts=["--env", "NOVALUE"])
    assert done.returncode not in (0, 255)
    assert b"K=V" in done.stderr


async def test_api_cwd_and_env(conn: Connection, server: ServeProcess, subdir: str) -> None:
    result = await conn.run('pwd; echo "$ANSWER"', cwd=subdir, env={"ANSWER": "42"})
    assert result.stdout == f"{server.root / subdir}\n42\n".encode()


async def test_api_missing_cwd_raises_not_found(conn: Connection) -> None:
    with pytest.raises(NotFound, match="no-such-dir"):
        await conn.run("pwd", cwd="no-such-dir")
