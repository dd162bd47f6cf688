"""Runs and transfers through a proxy that re-segments, delays, throttles and cuts the byte
stream give the same results as the direct path; a cut gives a clear error, never a hang, and
leaves a transfer that resumes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import tether
from tether.errors import ConnectionFailed

from .conftest import Setup
from .proxy import Faults, Proxy


@contextlib.asynccontextmanager
async def through(setup: Setup, up: Faults, down: Faults) -> AsyncIterator[tether.Connection]:
    """A connection to the server that passes through a fault proxy."""
    async with Proxy(("127.0.0.1", setup.port), up, down) as proxy, tether.connect(
        "127.0.0.1", proxy.port, home=setup.client_home, accept_new=True
    ) as conn:
        yield conn

SCRIPT = "seq 1 20000; echo to-stderr >&2; printf 'no newline'"


async def _run_through(setup: Setup, up: Faults, down: Faults) -> tether.RunResult:
    async with through(setup, up, down) as conn:
            return await asyncio.wait_for(conn.run(SCRIPT, input=b"x" * 1000), 60)


@pytest.mark.parametrize(("up", "down"), [
    (Faults(split="bytes"), Faults(split="random", seed=1)),
    (Faults(split="random", seed=2), Faults(split="bytes")),
    (Faults(coalesce=True), Faults(coalesce=True)),
    (Faults(delay=0.001, split="random", seed=3), Faults(rate=2_000_000, split="random", seed=4)),
], ids=["bytes-up", "bytes-down", "coalesced", "delayed-throttled"])
async def test_run_through_faults_matches_direct(setup: Setup, up: Faults,
                                                 down: Faults) -> None:
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        direct = await conn.run(SCRIPT)
    proxied = await _run_through(setup, up, down)
    assert (proxied.stdout, proxied.stderr, proxied.status) == (
        direct.stdout, direct.stderr, direct.status)
    assert direct.stdout.endswith(b"20000\nno newline")


async def test_transfer_through_random_splits_is_identical(setup: Setup, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    async with through(setup, Faults(split="random", seed=5),
                     Faults(split="random", seed=6)) as conn:
            await conn.put(src, "up.bin")
            back = tmp_path / "back.bin"
            await conn.get("up.bin", back)
    assert (setup.root / "up.bin").read_bytes() == src.read_bytes()
    assert back.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("direction", ["up", "down"])
async def test_cut_mid_run_is_a_clear_error_not_a_hang(setup: Setup, direction: str,
                                                       reset: bool) -> None:
    cut = Faults(cut_at=200_000, reset=reset)
    up, down = (cut, Faults()) if direction == "up" else (Faults(), cut)
    async with through(setup, up, down) as conn:
            with pytest.raises(ConnectionFailed):
                await asyncio.wait_for(
                    conn.run("head -c 50000000 /dev/zero", input=b"y" * 1_000_000), 30)


async def test_cut_mid_put_resumes_to_an_identical_file(setup: Setup, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 * 1024 * 1024))
    async with through(setup, Faults(cut_at=9_000_000), Faults()) as conn:
            with pytest.raises(ConnectionFailed):
                await asyncio.wait_for(conn.put(src, "big.bin"), 30)
    assert not (setup.root / "big.bin").exists()  # never a partial under the final name
    partial = setup.root / ".big.bin.tether-part"
    await _eventually(lambda: partial.exists() and partial.stat().st_size > 0)
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        result = await conn.put(src, "big.bin")
    assert result.files[0].resumed_from > 0
    assert (setup.root / "big.bin").read_bytes() == src.read_bytes()
    assert not partial.exists()


async def test_cut_mid_get_resumes_to_an_identical_file(setup: Setup, tmp_path: Path) -> None:
    (setup.root / "remote.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    dest = tmp_path / "local.bin"
    async with through(setup, Faults(), Faults(cut_at=9_000_000)) as conn:
            with pytest.raises(ConnectionFailed):
                await asyncio.wait_for(conn.get("remote.bin", dest), 30)
    assert not dest.exists()
    assert (tmp_path / ".local.bin.tether-part").stat().st_size > 0
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        result = await conn.get("remote.bin", dest)
    assert result.files[0].resumed_from > 0
    assert dest.read_bytes() == (setup.root / "remote.bin").read_bytes()


async def _eventually(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
