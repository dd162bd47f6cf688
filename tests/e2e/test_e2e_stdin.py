"""stdin end to end: forwarded from a pipe, EOF when there is none, large API input intact."""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Client
    from tether.client.api import Connection

MIB = 1024 * 1024


def test_cli_forwards_piped_stdin(client: Client) -> None:
    done = client.run("cat", input=b"x\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"x\n", b"")


def test_cli_forwards_stdin_to_argv_command(client: Client) -> None:
    done = client.run("tr", "a-z", "A-Z", input=b"hello\nworld\n")
    assert (done.returncode, done.stdout) == (0, b"HELLO\nWORLD\n")


def test_cli_stdin_devnull_gives_eof(client: Client) -> None:
    done = client.run("cat", timeout=30)  # the client's stdin is /dev/null
    assert (done.returncode, done.stdout) == (0, b"")


def test_cli_read_with_no_input_sees_eof(client: Client) -> None:
    done = client.run('read line; echo "status=$? line=[$line]"', timeout=30)
    assert done.stdout == b"status=1 line=[]\n"


def test_cli_no_stdin_flag_gives_eof(client: Client) -> None:
    proc = client.popen("cat", opts=["-n"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)  # our pipe stays open until the client exits
    assert (proc.returncode, out) == (0, b"")


def test_cli_exits_when_command_ignores_open_stdin(client: Client) -> None:
    """A command that never reads stdin ends the run even though stdin is still open."""
    read_end, write_end = os.pipe()
    try:
        proc = client.popen("echo done", stdin=read_end, stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (proc.returncode, out) == (0, b"done\n")


def test_cli_forwards_large_stdin(client: Client) -> None:
    data = os.urandom(3 * MIB + 12345)
    done = client.run("sha256sum", input=data)
    assert done.returncode == 0
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_api_input_round_trips_mebibytes(conn: Connection) -> None:
    data = os.urandom(4 * MIB + 777)
    result = await conn.run("cat", input=data)
    assert result.status == 0
    assert len(result.stdout) == len(data)
    assert result.stdout == data


async def test_api_without_input_reads_eof(conn: Connection) -> None:
    result = await conn.run("cat; echo end")
    assert (result.status, result.stdout) == (0, b"end\n")


async def test_api_stream_write_and_close_stdin(conn: Connection) -> None:
    async with conn.stream(["cat"]) as proc:
        await proc.write(b"abc")
        await proc.write(b"def\n")
        await proc.close_stdin()
        chunks = [data async for _, data in proc]
        info = await proc.wait()
    assert (b"".join(chunks), info.status) == (b"abcdef\n", 0)


def test_cli_large_stdin_to_a_command_that_never_reads_it(client: Client) -> None:
    done = client.run("sleep 0.2; echo done", input=os.urandom(20 * MIB), timeout=60)
    assert (done.returncode, done.stdout) == (0, b"done\n")


def test_cli_large_stdin_to_a_command_that_stops_reading(client: Client) -> None:
    done = client.run("head -c 5", input=b"x" * (20 * MIB), timeout=60)
    assert (done.returncode, done.stdout) == (0, b"xxxxx")
