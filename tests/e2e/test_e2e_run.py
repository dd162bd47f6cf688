"""``tether run`` and ``conn.run`` end to end: exit statuses, stdout/stderr, streaming."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Client
    from tether.client.api import Connection

INTERLEAVED = "for i in $(seq 1 500); do echo out$i; echo err$i >&2; done"


def _lines(prefix: str, count: int) -> bytes:
    return b"".join(f"{prefix}{i}\n".encode() for i in range(1, count + 1))


# --- exit statuses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "status"), [
    ("true", 0), ("false", 1), ("exit 42", 42), ("kill -9 $$", 137), ("kill -TERM $$", 143),
])
def test_cli_mirrors_shell_exit_status(client: Client, command: str, status: int) -> None:
    assert client.run(command).returncode == status


@pytest.mark.parametrize(("argv", "status"), [
    (["sh", "-c", "exit 3"], 3), (["true"], 0), (["sh", "-c", "kill -KILL $$"], 137),
])
def test_cli_mirrors_argv_exit_status(client: Client, argv: list[str], status: int) -> None:
    assert client.run(*argv).returncode == status


def test_cli_program_that_cannot_start_exits_127(client: Client) -> None:
    done = client.run("/no/such/program", "arg")
    assert done.returncode == 127
    assert b"/no/such/program" in done.stderr


def test_cli_shell_command_not_found_exits_127(client: Client) -> None:
    assert client.run("no-such-command-tether-e2e").returncode == 127


def test_cli_connection_refused_exits_255(client: Client) -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = client.run("true", opts=["-p", str(port)])  # the last -p wins
    assert done.returncode == 255
    assert done.stderr.startswith(b"tether: ")
    assert done.stderr.count(b"\n") == 1


@pytest.mark.parametrize(("command", "status", "sig"), [
    ("true", 0, None), ("false", 1, None), ("exit 42", 42, None),
    ("kill -9 $$", 137, 9), ("kill -INT $$", 130, 2),
])
async def test_api_status_and_signal(
    conn: Connection, command: str, status: int, sig: int | None
) -> None:
    result = await conn.run(command)
    assert (result.status, result.signal, result.timed_out) == (status, sig, False)
    assert result.ok is (status == 0)


# --- stdout and stderr --------------------------------------------------------------------------


def test_cli_separates_stdout_and_stderr(client: Client) -> None:
    done = client.run(INTERLEAVED)
    assert done.returncode == 0
    assert done.stdout == _lines("out", 500)
    assert done.stderr == _lines("err", 500)


async def test_api_separates_stdout_and_stderr(conn: Connection) -> None:
    result = await conn.run(INTERLEAVED)
    assert result.stdout == _lines("out", 500)
    assert result.stderr == _lines("err", 500)


def test_cli_streams_output_as_produced(client: Client) -> None:
    proc = client.popen("echo first; sleep 3; echo second", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        got_first = time.monotonic()
        rest = proc.stdout.read()
        status = proc.wait(60)
        exited = time.monotonic()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert (first, rest, status) == (b"first\n", b"second\n", 0)
    assert exited - got_first >= 1.5, "the first line only arrived at exit"


async def test_api_streams_output_as_produced(conn: Connection) -> None:
    arrivals: list[tuple[float, bytes]] = []
    async with conn.stream("echo first; sleep 3; echo second >&2") as proc:
        async for channel, data in proc:
            arrivals.append((time.monotonic(), data))
            assert channel == (1 if data == b"first\n" else 2)
        info = await proc.wait()
    ended = time.monotonic()
    assert [data for _, data in arrivals] == [b"first\n", b"second\n"]
    assert info.status == 0
    assert ended - arrivals[0][0] >= 1.5, "the first chunk only arrived at exit"
