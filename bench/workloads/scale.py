"""Workload 6: scale.

- idle: N authenticated tether connections opened from this process and held; the value is the
  server's RSS while they are held (its baseline and the time to open them ride along). The
  issue names no peer for this one.
- concurrent: M connections opened at once, each running ``sleep S``; the value is the wall time
  from the first connect to the last exit, against AsyncSSH doing the same to the private sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.config import Context
from bench.peers import TetherServer
from bench.procs import BenchError, rss_mib
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads.common import asyncssh_connect, tether_connect

OPENING = 100  # connections being opened at once while building the idle set


async def _hold_idle(ctx: Context, server: TetherServer, n: int) -> Sample:
    baseline = rss_mib(server.proc.pid)
    gate = asyncio.Semaphore(OPENING)

    async def open_one() -> Any:
        async with gate:
            return await tether_connect(ctx.peers, server)

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(open_one() for _ in range(n)), return_exceptions=True)
    opened = time.perf_counter() - t0
    try:
        failed = [c for c in conns if isinstance(c, BaseException)]
        if failed:
            raise BenchError(f"{len(failed)} of {n} connections failed: {failed[0]!r}")
        await asyncio.sleep(0.5)  # let the server settle with every session idle
        held = rss_mib(server.proc.pid)
    finally:
        await asyncio.gather(*(c.close() for c in conns if not isinstance(c, BaseException)),
                             return_exceptions=True)
    return Sample(held, {"server_rss_mib": held, "baseline_rss_mib": baseline,
                         "open_seconds": opened})


async def _concurrent(n: int, one: Callable[[], Awaitable[None]]) -> Sample:
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    wall = time.perf_counter() - t0
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise BenchError(f"{len(failed)} of {n} concurrent commands failed: {failed[0]!r}")
    return Sample(wall)


def _tether_sleep(ctx: Context, server: TetherServer, command: str
                  ) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        conn = await tether_connect(ctx.peers, server)
        try:
            result = await conn.run(command)
            if result.status != 0:
                raise BenchError(f"{command!r} exited with {result.status}")
        finally:
            await conn.close()

    return one


def _asyncssh_sleep(ctx: Context, command: str) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        conn = await asyncssh_connect(ctx.peers.sshd)
        async with conn:
            await conn.run(command, check=True)

    return one


def _groups(ctx: Context, loop: asyncio.AbstractEventLoop, idle: TetherServer,
            busy: TetherServer) -> list[Group]:
    sizes = ctx.sizes
    n, m, s = sizes.idle_connections, sizes.concurrent, sizes.sleep_seconds
    command = f"sleep {s:g}"
    tether_one = _tether_sleep(ctx, busy, command)
    asyncssh_one = _asyncssh_sleep(ctx, command)
    return [
        Group(
            key="scale idle", title=f"{n:,} idle authenticated connections held: server RSS",
            unit="MiB", better="lower", quantity="server RSS",
            contenders=[Contender(
                "tether", lambda: loop.run_until_complete(_hold_idle(ctx, idle, n)),
                f"{n} × await tether.connect(...), held", tether=True)],
            targets=[Target("server RSS <= 150 MiB", "tether", "<=", 150,
                            metric="server_rss_mib")],
        ),
        Group(
            key="scale concurrent",
            title=f"{m} concurrent `{command}` over separate connections: wall time",
            unit="s", better="lower", quantity="wall time",
            contenders=[
                Contender("tether", lambda: loop.run_until_complete(_concurrent(m, tether_one)),
                          f"{m} × (connect, run {command!r}) at once", tether=True),
                Contender("asyncssh", lambda: loop.run_until_complete(
                    _concurrent(m, asyncssh_one)), f"{m} × asyncssh (connect, run) at once"),
            ],
            targets=[Target(f"finishing in <= {s + 1:g} s wall", "tether", "<=", s + 1.0)],
        ),
    ]


def run(ctx: Context) -> list[GroupResult]:
    loop = asyncio.new_event_loop()
    try:
        with ctx.peers.tether_server() as idle, ctx.peers.tether_server() as busy:
            return [run_group(g, ctx.sizes.rounds, ctx.sizes.warmup)
                    for g in _groups(ctx, loop, idle, busy)]
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
