"""Workload 1: command latency on an open connection, N × ``echo hi`` per round.

tether's API (``conn.run``) against the floor (a local ``subprocess.run(..., shell=True)``) and
against AsyncSSH over the private OpenSSH server (one connection, ``conn.run``). A round's value
is the median latency of its N commands.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.config import Context
from bench.procs import BenchError
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.common import asyncssh_connect, tether_connect

COMMAND = "echo hi"
OUTPUT = b"hi\n"


def _median_ms(times: list[float]) -> Sample:
    return Sample(statistics.median(times) * 1000,
                  {"mean_ms": statistics.fmean(times) * 1000})


def _floor(n: int) -> Sample:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = subprocess.run(COMMAND, shell=True, stdout=subprocess.PIPE, check=True).stdout
        times.append(time.perf_counter() - t0)
        _check(out)
    return _median_ms(times)


def _check(out: bytes | str) -> None:
    got = out.encode() if isinstance(out, str) else out
    if got != OUTPUT:
        raise BenchError(f"{COMMAND!r} printed {got!r}")


async def _timed(n: int, call: Callable[[], Awaitable[bytes | str]]) -> Sample:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = await call()
        times.append(time.perf_counter() - t0)
        _check(out)
    return _median_ms(times)


def _tether_call(conn: Any) -> Callable[[], Awaitable[bytes]]:
    async def call() -> bytes:
        result = await conn.run(COMMAND)
        return bytes(result.stdout)

    return call


def _asyncssh_call(conn: Any) -> Callable[[], Awaitable[str]]:
    async def call() -> str:
        result = await conn.run(COMMAND, check=True)
        return str(result.stdout)

    return call


def run(ctx: Context) -> list[GroupResult]:
    n = ctx.sizes.commands
    loop = asyncio.new_event_loop()
    try:
        with ctx.peers.tether_server() as server:
            tconn = loop.run_until_complete(tether_connect(ctx.peers, server))
            aconn = loop.run_until_complete(asyncssh_connect(ctx.peers.sshd))
            try:
                group = _group(n, lambda c: loop.run_until_complete(_timed(n, c)),
                               _tether_call(tconn), _asyncssh_call(aconn))
                return [run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)]
            finally:
                loop.run_until_complete(tconn.close())
                aconn.close()
                loop.run_until_complete(aconn.wait_closed())
    finally:
        loop.close()


def _group(n: int, timed: Callable[[Any], Sample], tether_call: Any,
           asyncssh_call: Any) -> Group:
    return Group(
        key="latency", title=f"{n} × `{COMMAND}` on an open connection (median per command)",
        unit="ms", better="lower", quantity="time",
        contenders=[
            Contender("tether", lambda: timed(tether_call),
                      f"await conn.run({COMMAND!r})  # tether.connect(...)", tether=True),
            Contender("floor", lambda: _floor(n),
                      f"subprocess.run({COMMAND!r}, shell=True)  # local, no network"),
            Contender("asyncssh", lambda: timed(asyncssh_call),
                      f"await conn.run({COMMAND!r})  # asyncssh.connect(...) to sshd"),
        ],
        targets=[
            Target("tether API median <= 3x the floor", "tether", "<=", 3.0, peer="floor"),
            Target("<= 0.1x AsyncSSH over OpenSSH", "tether", "<=", 0.1, peer="asyncssh"),
        ],
    )
