"""Shells through the fault proxy (test_chaos.py does runs and transfers): a line-mode shell and
a terminal session over re-segmented, delayed and throttled streams give what the direct path
gives, and a cut ends them with a clear error instead of a hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import tether
from tether.errors import ConnectionFailed

from .conftest import Setup
from .proxy import Faults, Proxy

FAULTS = {
    "bytes": (Faults(split="bytes"), Faults(split="bytes")),
    "random": (Faults(split="random", seed=11), Faults(split="random", seed=12)),
    "coalesced": (Faults(coalesce=True), Faults(coalesce=True)),
    "delayed-throttled": (Faults(delay=0.001, split="random", seed=13),
                          Faults(rate=1_000_000, split="random", seed=14)),
}
LINES = ["cd /", "X=persisted", "echo $X $(pwd)", "seq 1 3000", "printf 'no newline'",
         "echo err >&2; false"]
TERMINAL = ["sh", "-c", "stty -echo; seq 1 3000; printf '\\033[1mbold\\033[0m'; exit 3"]


@contextlib.asynccontextmanager
async def _connection(setup: Setup, faults: tuple[Faults, Faults] | None
                      ) -> AsyncIterator[tether.Connection]:
    async with contextlib.AsyncExitStack() as stack:
        port = setup.port
        if faults is not None:
            proxy = await stack.enter_async_context(Proxy(("127.0.0.1", port), *faults))
            port = proxy.port
        yield await stack.enter_async_context(tether.connect(
            "127.0.0.1", port, home=setup.client_home, accept_new=True))


async def _line_session(conn: tether.Connection) -> list[tuple[int, bytes, bytes]]:
    async with await conn.line_shell() as shell:
        results = [await shell.run(line) for line in LINES]
        await shell.close()
    return [(r.status, r.stdout, r.stderr) for r in results]


async def _terminal_session(conn: tether.Connection) -> tuple[bytes, int | None]:
    proc = await conn.shell(TERMINAL)
    out = b"".join([chunk async for _, chunk in proc])
    return out, (await proc.wait()).status


@pytest.mark.parametrize("name", list(FAULTS))
async def test_shells_through_faults_match_direct(setup: Setup, name: str) -> None:
    async with _connection(setup, None) as conn:
        direct = await _line_session(conn), await _terminal_session(conn)
    async with _connection(setup, FAULTS[name]) as conn:
        proxied = await asyncio.wait_for(_line_session(conn), 60), \
            await asyncio.wait_for(_terminal_session(conn), 60)
    assert proxied == direct
    lines, (screen, status) = direct
    assert lines[2] == (0, b"persisted /\n", b"") and lines[5] == (1, b"", b"err\n")
    assert screen.endswith(b"\x1b[1mbold\x1b[0m") and b"3000\r\n" in screen and status == 3


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_a_cut_ends_a_shell_with_a_clear_error(setup: Setup, direction: str) -> None:
    cut = Faults(cut_at=60_000)
    faults = (cut, Faults()) if direction == "up" else (Faults(), cut)
    async with _connection(setup, faults) as conn:
        with pytest.raises(ConnectionFailed):
            async with await conn.line_shell() as shell:
                for _ in range(200):
                    await asyncio.wait_for(shell.run("head -c 20000 /dev/zero | tr '\\0' x; "
                                                     "echo " + "y" * 2000), 30)
