"""The application keepalive (ping/pong on stream 0): a peer that vanishes without a FIN while a
command runs is noticed by the other side within a few intervals — the client exits 255 with one
line, the server ends the session and kills the command's process group — while a connection
that is busy, or silent but answering, is never cut.

The vanishing is :class:`BlackHoleProxy`: it stops forwarding in both directions and never
closes, so neither FIN, RST nor a TCP keepalive failure tells anyone anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import tether
from support import TETHER
from tether.errors import ConnectionBroken
from tether.inventory import Host, add_host
from tether.server.limits import Limits

from .conftest import Setup, make_setup
from .helpers import family, marked, new_mark, survivors
from .proxy import BlackHoleProxy, Faults, Proxy

PATHS = {"fast": {}, "full": {"TETHER_FULL_CLI": "1"}}  # the one-shot path and the click one


async def _eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _cli(s: Setup, port: int, path: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *TETHER, "run", "--home", str(s.client_home), "-p", str(port), "--accept-new", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **PATHS[path]}, start_new_session=True)


@pytest.mark.parametrize("path", PATHS)
async def test_the_cli_gives_up_on_a_server_that_vanished(tmp_path: Path, path: str) -> None:
    """``tether run --keepalive 1 HOST -- <runs forever>``: the proxy goes silent, the client
    exits 255 with one line instead of hanging (the server's own keepalive is off here)."""
    s, mark = await make_setup(tmp_path, Limits(keepalive=0)), new_mark()
    try:
        async with BlackHoleProxy(("127.0.0.1", s.port)) as proxy:
            proc = await _cli(s, proxy.port, path, "--keepalive", "1", "127.0.0.1", "--",
                              *family(mark))
            await _eventually(lambda: len(marked(mark)) >= 2)
            proxy.vanish()
            out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await s.server.close()
        survivors(mark)
    assert (proc.returncode, out, err) == (255, b"",
                                           b"tether: no answer from the server for 3 s\n")


async def test_an_inventory_hosts_keepalive_applies(tmp_path: Path) -> None:
    """``keepalive = 1`` in hosts.toml: ``tether run NAME`` and ``tether run @group`` give up on
    the vanished server without a flag (one host: exit 255; a fleet: that host failed)."""
    s, marks = await make_setup(tmp_path, Limits(keepalive=0)), (new_mark(), new_mark())
    try:
        async with BlackHoleProxy(("127.0.0.1", s.port)) as proxy:
            add_host(s.client_home, Host("frozen", "127.0.0.1", proxy.port, ("g",),
                                         keepalive=1.0))
            one = await _cli(s, proxy.port, "full", "frozen", "--", *family(marks[0]))
            many = await _cli(s, proxy.port, "full", "@g", "--", *family(marks[1]))
            # both commands run (their connections are up) before the server vanishes
            await _eventually(lambda: all(len(marked(m)) >= 2 for m in marks))
            proxy.vanish()
            (out, err), (_, fleet_err) = await asyncio.wait_for(
                asyncio.gather(one.communicate(), many.communicate()), 60)
    finally:
        await s.server.close()
        for mark in marks:
            survivors(mark)
    assert (one.returncode, out, err) == (255, b"",
                                          b"tether: no answer from the server for 3 s\n")
    assert many.returncode == 255 and b"no answer from the server for 3 s" in fleet_err


async def test_the_server_ends_the_session_of_a_client_that_vanished(tmp_path: Path) -> None:
    """The client goes silent while its command runs: the server's keepalive ends the session,
    the command's process group is killed, and the audit log says why."""
    audit = tmp_path / "audit.jsonl"
    s, mark = await make_setup(tmp_path, Limits(keepalive=1), audit=audit), new_mark()
    try:
        async with BlackHoleProxy(("127.0.0.1", s.port)) as proxy:
            conn = await tether.connect("127.0.0.1", proxy.port, home=s.client_home,
                                        accept_new=True)
            try:
                await conn.start(family(mark))
                await _eventually(lambda: len(marked(mark)) >= 2)
                proxy.vanish()
                await _eventually(lambda: not s.server.sessions)
                left = await asyncio.to_thread(survivors, mark, 10.0)
            finally:
                await proxy.close()
                await conn.close()
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as other:
            assert (await other.run(["echo", "next"])).stdout == b"next\n"
    finally:
        await s.server.close()
    assert left == []
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    gone = [e for e in events if e["event"] == "disconnection"]
    assert gone[0]["reason"] == "no answer from the client for 3 s"


async def test_the_api_raises_connection_broken(tmp_path: Path) -> None:
    """``connect(keepalive=...)``: a run waiting on a vanished server fails with
    ConnectionBroken, and so does the next operation."""
    s, mark = await make_setup(tmp_path, Limits(keepalive=0)), new_mark()
    try:
        async with BlackHoleProxy(("127.0.0.1", s.port)) as proxy:
            conn = await tether.connect("127.0.0.1", proxy.port, home=s.client_home,
                                        accept_new=True, keepalive=0.5)
            try:
                running = asyncio.ensure_future(conn.run(family(mark)))
                await _eventually(lambda: len(marked(mark)) >= 2)
                proxy.vanish()
                with pytest.raises(ConnectionBroken, match=r"^no answer from the server for "
                                                           r"1\.5 s$"):
                    await asyncio.wait_for(running, 60)
                with pytest.raises(ConnectionBroken):
                    await conn.run(["true"])
            finally:
                await proxy.close()
                await conn.close()
    finally:
        await s.server.close()
        survivors(mark)


async def test_a_busy_or_answering_connection_is_never_cut(tmp_path: Path) -> None:
    """Both keepalives at 1 s through a live (throttled) proxy: a put of several seconds, output
    that trickles, and a command silent for several intervals all end normally."""
    s = await make_setup(tmp_path, Limits(keepalive=1))
    data = os.urandom(6 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    trickle = "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.5; done"
    try:
        async with Proxy(("127.0.0.1", s.port), Faults(rate=2_000_000), Faults()) as proxy, \
                tether.connect("127.0.0.1", proxy.port, home=s.client_home, accept_new=True,
                               keepalive=1) as conn:
            put, out, quiet = await asyncio.gather(
                conn.put(tmp_path / "big.bin", "big.bin"),
                conn.run(["sh", "-c", trickle]),
                conn.run(["sleep", "4.5"]),
            )
    finally:
        await s.server.close()
    assert put.bytes == len(data) and (s.root / "big.bin").read_bytes() == data
    assert out.stdout == b"".join(b"%d\n" % i for i in range(1, 9)) and out.ok
    assert quiet.ok


@pytest.mark.parametrize("path", PATHS)
async def test_the_cli_answers_the_servers_pings(tmp_path: Path, path: str) -> None:
    """A silent command under a server pinging every second: both client paths (the one-shot
    select loop has no keepalive of its own) answer, and the command runs to its end."""
    s = await make_setup(tmp_path, Limits(keepalive=1))
    try:
        proc = await _cli(s, s.port, path, "127.0.0.1", "--", "sleep 4.5; echo done")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await s.server.close()
    assert (proc.returncode, out, err) == (0, b"done\n", b"")


async def test_pings_do_not_keep_an_idle_connection_open(tmp_path: Path) -> None:
    """The server pings every half second and the client answers, but with no stream open the
    idle timeout still ends the connection: a pong is life, not work."""
    audit = tmp_path / "audit.jsonl"
    s = await make_setup(tmp_path, Limits(keepalive=0.5, idle_timeout=2.5), audit=audit)
    try:
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as conn:
            assert (await conn.run(["echo", "here"])).stdout == b"here\n"
            await _eventually(lambda: not s.server.sessions)
            with pytest.raises(ConnectionBroken):
                await conn.run(["true"])
    finally:
        await s.server.close()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    gone = [e for e in events if e["event"] == "disconnection"]
    assert gone[0]["reason"] == "idle for too long"


async def test_the_sync_facade_takes_a_keepalive(tmp_path: Path) -> None:
    """``SyncConnection(..., keepalive=...)``: a blocking run on a vanished server raises
    ConnectionBroken; a negative interval is refused before connecting."""
    s, mark = await make_setup(tmp_path, Limits(keepalive=0)), new_mark()
    try:
        with pytest.raises(ValueError, match="keepalive"):
            await asyncio.to_thread(tether.SyncConnection, "127.0.0.1", s.port,
                                    home=s.client_home, accept_new=True, keepalive=-1)
        async with BlackHoleProxy(("127.0.0.1", s.port)) as proxy:
            conn = await asyncio.to_thread(tether.SyncConnection, "127.0.0.1", proxy.port,
                                           home=s.client_home, accept_new=True, keepalive=0.5)
            try:
                running = asyncio.ensure_future(asyncio.to_thread(conn.run, family(mark)))
                await _eventually(lambda: len(marked(mark)) >= 2)
                proxy.vanish()
                with pytest.raises(ConnectionBroken, match="no answer from the server"):
                    await asyncio.wait_for(running, 60)
            finally:
                await proxy.close()
                await asyncio.to_thread(conn.close)
    finally:
        await s.server.close()
        survivors(mark)
