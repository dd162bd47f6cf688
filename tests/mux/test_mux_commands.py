"""Commands through ``tether mux``: run, shell, put and get ride one server connection and
behave exactly as direct ones; a command that goes away has its remote command killed; without
a usable mux everything connects directly; the inventory's ``mux = "auto"`` turns it on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether
from support import TETHER, wait_until
from tether.client import mux

HOST = "127.0.0.1"
Cli = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture
def audited(make_server: Callable[..., object], tmp_path: Path) -> tuple[object, Path]:
    """A server of its own with an audit log (to count its connections)."""
    audit = tmp_path / "audit.jsonl"
    return make_server("--audit", str(audit)), audit


@pytest.fixture
def home(client_home: Path) -> Iterator[Path]:
    """The shared client identity; the mux a test started is stopped at the end."""
    yield client_home
    try:
        pid = mux.request(client_home, {"op": "status"})["pid"]
    except mux.MuxUnavailable:
        return
    mux.request(client_home, {"op": "stop"})
    if not wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10):
        os.kill(pid, signal.SIGKILL)


def _connections(audit: Path) -> int:
    events = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    return sum(1 for e in events if e["event"] == "connection")


def test_run_shell_put_get_share_one_connection(cli: Cli, home: Path, audited: tuple,
                                                tmp_path: Path) -> None:
    server, audit = audited
    port = str(server.port)
    base = ("--mux", "auto", "-p", port)
    first = cli("run", *base, HOST, "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                home=home)
    assert (first.returncode, first.stdout, first.stderr) == (3, b"out\n", b"err\n")
    full = cli("run", *base, HOST, "--", "printf", "%s", "full path", home=home,
               env={"TETHER_FULL_CLI": "1"})
    assert (full.returncode, full.stdout) == (0, b"full path")
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "up.bin").write_bytes(data)
    remote = str(tmp_path / "remote.bin")
    put = cli("put", *base, str(tmp_path / "up.bin"), f"{HOST}:{remote}", home=home)
    assert put.returncode == 0, put.stderr
    got = cli("get", *base, f"{HOST}:{remote}", str(tmp_path / "down.bin"), home=home)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "down.bin").read_bytes() == data
    lines = cli("shell", *base, HOST, home=home, input=b"cd /\npwd\nexit 4\n")
    assert (lines.returncode, lines.stdout) == (4, b"/\n")
    stdin = cli("run", *base, HOST, "--", "wc", "-c", home=home, input=b"x" * 100_000)
    assert stdin.stdout.strip() == b"100000"
    assert _connections(audit) == 1  # every command above rode the mux's one connection
    (conn,) = mux.request(home, {"op": "status"})["connections"]
    assert conn["port"] == server.port and conn["streams"] == 0


async def test_api_connections_share_and_run_at_once(home: Path, audited: tuple) -> None:
    server, audit = audited
    import asyncio

    async with tether.connect(HOST, server.port, home=home, mux="auto") as one, \
            tether.connect(HOST, server.port, home=home, mux="auto") as two:
        assert one.shared and two.shared
        assert one.server.fingerprint == server.fingerprint
        results = await asyncio.gather(*(c.run(f"echo {i}") for i in range(5)
                                         for c in (one, two)))
    assert sorted(r.text for r in results) == sorted(f"{i}\n" for i in range(5) for _ in "ab")
    assert _connections(audit) == 1


def test_a_client_that_goes_away_has_its_command_killed(home: Path, server: object,
                                                        mark: object) -> None:
    env = {**os.environ, "TETHER_HOME": str(home)}
    proc = subprocess.Popen(
        [*TETHER, "run", "--mux", "auto", "-p", str(server.port), *mark.opts, HOST, "--",  # type: ignore[attr-defined]
         "sleep", "60"], env=env, stdin=subprocess.DEVNULL)
    try:
        mark.wait_for(1)  # type: ignore[attr-defined]
        proc.kill()  # no chance to say anything: the mux notices the socket close
        proc.wait(10)
        assert mark.survivors(10) == []  # type: ignore[attr-defined]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the stream closes when the server's report of the killed command reaches the mux,
    # which may come a moment after the process is gone
    assert wait_until(
        lambda: mux.request(home, {"op": "status"})["connections"][0]["streams"] == 0, 10)


def test_without_a_usable_mux_commands_connect_directly(cli: Cli, home: Path, server: object,
                                                        tmp_path: Path) -> None:
    runtime = tmp_path / ("r" * 120)  # a socket path longer than a Unix socket may have
    runtime.mkdir()
    done = cli("run", "--mux", "auto", "-p", str(server.port), HOST, "--", "echo", "direct",  # type: ignore[attr-defined]
               home=home, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert (done.returncode, done.stdout) == (0, b"direct\n")
    assert not any(runtime.iterdir())  # no mux was started


def test_an_unknown_server_through_the_mux(cli: Cli, make_client_home: Callable[..., Path],
                                           server: object) -> None:
    fresh = make_client_home("fresh", authorized=True)  # the server is not pinned here
    args = ("run", "--mux", "auto", "-p", str(server.port), HOST, "--", "true")  # type: ignore[attr-defined]
    try:
        refused = cli(*args, home=fresh)
        assert refused.returncode == 255
        assert b"is not known" in refused.stderr and b"--accept-new" in refused.stderr
        pinned = cli(*args[:1], "--accept-new", *args[1:], home=fresh)
        assert pinned.returncode == 0, pinned.stderr
        assert cli(*args, home=fresh).returncode == 0
    finally:
        mux.request(fresh, {"op": "stop"})


def test_the_inventory_turns_the_mux_on(cli: Cli, home: Path, server: object) -> None:
    hosts = home / "hosts.toml"
    saved = hosts.read_text() if hosts.exists() else None
    hosts.write_text(f'[hosts.muxed]\naddress = "{HOST}"\nport = {server.port}\n'  # type: ignore[attr-defined]
                     'mux = "auto"\n')
    try:
        done = cli("run", "muxed", "--", "echo", "named", home=home)
        assert (done.returncode, done.stdout) == (0, b"named\n")
        (conn,) = mux.request(home, {"op": "status"})["connections"]
        assert conn["port"] == server.port  # type: ignore[attr-defined]
        off = cli("run", "--mux", "no", "muxed", "--", "true", home=home)
        assert off.returncode == 0
        bad = '[hosts.x]\naddress = "a"\nmux = "sometimes"\n'
        hosts.write_text(bad)
        broken = cli("run", "x", "--", "true", home=home)
        assert broken.returncode == 1 and b"'mux' must be" in broken.stderr
    finally:
        if saved is None:
            hosts.unlink()
        else:
            hosts.write_text(saved)


def test_a_running_mux_is_used_unless_told_no(cli: Cli, home: Path, audited: tuple,
                                              tmp_path: Path) -> None:
    server, audit = audited
    port = str(server.port)
    started = cli("mux", "start", home=home)
    assert started.returncode == 0, started.stderr
    fast = cli("run", "-p", port, HOST, "--", "echo", "fast", home=home)
    assert (fast.returncode, fast.stdout) == (0, b"fast\n")
    full = cli("run", "-p", port, HOST, "--", "echo", "full", home=home,
               env={"TETHER_FULL_CLI": "1"})
    assert (full.returncode, full.stdout) == (0, b"full\n")
    (tmp_path / "f.txt").write_bytes(b"through the mux\n")
    put = cli("put", "-p", port, str(tmp_path / "f.txt"), f"{HOST}:{tmp_path / 'g.txt'}",
              home=home)
    assert put.returncode == 0, put.stderr
    lines = cli("shell", "-p", port, HOST, home=home, input=b"echo shell\n")
    assert (lines.returncode, lines.stdout) == (0, b"shell\n")
    assert _connections(audit) == 1  # all of them rode the running mux's connection
    (conn,) = mux.request(home, {"op": "status"})["connections"]
    assert conn["port"] == server.port
    direct = cli("run", "--mux", "no", "-p", port, HOST, "--", "true", home=home)
    assert direct.returncode == 0
    assert _connections(audit) == 2  # --mux no: a connection of its own


async def test_the_api_uses_a_running_mux_only_when_asked(home: Path, audited: tuple) -> None:
    server, audit = audited
    async with tether.connect(HOST, server.port, home=home, mux="existing") as conn:
        assert not conn.shared  # no mux runs, none is started
        assert (await conn.run("echo one")).text == "one\n"
    with pytest.raises(mux.MuxUnavailable):
        mux.request(home, {"op": "status"})
    async with tether.connect(HOST, server.port, home=home, mux="auto") as conn:
        assert conn.shared
    async with tether.connect(HOST, server.port, home=home, mux="existing") as conn:
        assert conn.shared
    async with tether.connect(HOST, server.port, home=home) as conn:
        assert not conn.shared  # the API's default is "no"
    assert _connections(audit) == 3  # direct, the mux's, direct


def test_no_mux_is_started_unless_asked(cli: Cli, home: Path, server: object) -> None:
    done = cli("run", "-p", str(server.port), HOST, "--", "echo", "direct", home=home)  # type: ignore[attr-defined]
    assert (done.returncode, done.stdout) == (0, b"direct\n")
    assert not os.path.exists(mux.socket_path(home))
    with pytest.raises(mux.MuxUnavailable):
        mux.request(home, {"op": "status"})


def test_an_account_through_the_mux_is_a_connection_of_its_own(cli: Cli, home: Path,
                                                                 server: object) -> None:
    import pwd

    own = pwd.getpwuid(os.geteuid()).pw_name  # the server's own account: no mapping needed
    port = str(server.port)  # type: ignore[attr-defined]
    for env in ({}, {"TETHER_FULL_CLI": "1"}):  # the fast path and the full one
        done = cli("run", "--mux", "auto", "-p", port, f"{own}@{HOST}", "--", "id", "-un",
                   home=home, env=env)
        assert (done.returncode, done.stdout) == (0, f"{own}\n".encode()), done.stderr
    plain = cli("run", "--mux", "auto", "-p", port, HOST, "--", "true", home=home)
    assert plain.returncode == 0, plain.stderr
    users = sorted(c["user"] for c in mux.request(home, {"op": "status"})["connections"])
    assert users == ["", own]  # the server's choice and the account asked for: apart
