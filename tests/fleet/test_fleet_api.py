"""``tether.connect_many`` across the 50-server farm: run, put, get, and hosts that fail."""

from __future__ import annotations

import time
from pathlib import Path

import tether
from tether.client.fleet import HostResult
from tether.inventory import Target

from .farm import (
    ADDRESSES,
    SLOW,
    SLOW_COMMAND,
    STOPPED,
    UNAUTHORIZED_B,
    UNTRUSTED_B,
    Farm,
    name_of,
)


def _names(hosts: list[HostResult]) -> set[str]:
    return {h.name for h in hosts}


async def test_run_on_all_fifty(farm: Farm) -> None:
    async with tether.connect_many("@all", home=farm.client_a) as fleet:
        assert len(fleet.targets) == 50
        results = await fleet.run("pwd; echo out; echo err >&2")
    assert results.ok, [(h.name, h.error) for h in results.failed]
    for host in results:
        node = farm.nodes[host.target.address]
        assert host.status == 0 and host.kind == "ok" and host.error is None
        assert host.text == f"{node.root}\nout\n"
        assert host.error_text == "err\n"
        assert host.duration > 0
    assert [h.name for h in results] == [name_of(a) for a in ADDRESSES]


async def test_connections_are_kept_between_operations(farm: Farm, tmp_path: Path) -> None:
    source = tmp_path / "conf.txt"
    source.write_text("setting = 1\n")
    async with tether.connect_many("@farm", home=farm.client_a, parallel=16) as fleet:
        first = await fleet.connect()
        assert first.ok and len(fleet._conns) == 50
        conns = dict(fleet._conns)
        put = await fleet.put([source], "api-put.txt", force=True)
        assert put.ok, [(h.name, h.error) for h in put.failed]
        assert fleet._conns == conns  # the same 50 connections did the upload
        got = await fleet.get("api-put.txt", tmp_path / "down", force=True)
        assert got.ok, [(h.name, h.error) for h in got.failed]
    assert fleet._conns == {}
    for address, node in farm.nodes.items():
        assert (node.root / "api-put.txt").read_text() == "setting = 1\n"
        local = tmp_path / "down" / name_of(address) / "api-put.txt"
        assert local.read_text() == "setting = 1\n"
        assert put.by_name(name_of(address)).transfer is not None


async def test_failures_are_per_host(farm: Farm, stopped: list[str]) -> None:
    """Stopped, unauthorized, untrusted and slow hosts are reported; the other 42 succeed."""
    started = time.monotonic()
    async with tether.connect_many("@all", home=farm.client_b, timeout=3.0) as fleet:
        results = await fleet.run(SLOW_COMMAND)
    elapsed = time.monotonic() - started
    expect = {
        "unreachable": STOPPED, "unauthorized": UNAUTHORIZED_B, "untrusted": UNTRUSTED_B,
        "timeout": SLOW,
    }
    for kind, addresses in expect.items():
        hosts = [results.by_name(name_of(a)) for a in addresses]
        assert all(h.kind == kind and not h.ok and h.error for h in hosts), \
            [(h.name, h.kind, h.error) for h in hosts]
    bad = {name_of(a) for addresses in expect.values() for a in addresses}
    assert _names(results.failed) == bad
    assert len(results.succeeded) == 50 - len(bad) == 42
    assert all(h.text == "fine\n" for h in results.succeeded)
    assert elapsed < 10, "a slow host held the others up"
    assert not results.ok


async def test_remote_timeout_and_exit_status(farm: Farm) -> None:
    targets = [Target(name_of(a), a, farm.port) for a in SLOW + ADDRESSES[:2]]
    async with tether.connect_many(targets, home=farm.client_a) as fleet:
        results = await fleet.run(SLOW_COMMAND, remote_timeout=0.5)
        failing = await fleet.run("exit 7")
    assert {h.name: h.kind for h in results} == {
        name_of(SLOW[0]): "timeout", name_of(SLOW[1]): "timeout",
        name_of(ADDRESSES[0]): "ok", name_of(ADDRESSES[1]): "ok",
    }
    assert all(h.kind == "failed" and h.status == 7 for h in failing)


async def test_parallel_limit_bounds_concurrency(farm: Farm) -> None:
    active = peak = 0

    def output(target: Target, channel: int, data: bytes) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)

    def done(result: HostResult) -> None:
        nonlocal active
        active -= 1

    async with tether.connect_many("@all", home=farm.client_a, parallel=5) as fleet:
        results = await fleet.run("echo start; sleep 0.1", on_output=output, on_done=done)
    assert results.ok and peak <= 5 and peak >= 2


async def test_on_output_streams_and_capture_off(farm: Farm) -> None:
    seen: list[tuple[str, int, bytes]] = []
    async with tether.connect_many(",".join(ADDRESSES[:3]), home=farm.client_a,
                                   port=farm.port) as fleet:
        results = await fleet.run(["sh", "-c", "echo a; echo b >&2"], capture=False,
                                  on_output=lambda t, c, d: seen.append((t.name, c, d)))
    assert results.ok and all(h.stdout == b"" for h in results)
    assert {(n, c) for n, c, _ in seen} == {(a, c) for a in ADDRESSES[:3] for c in (1, 2)}


async def test_input_reaches_every_host(farm: Farm) -> None:
    async with tether.connect_many("n02,n03", home=farm.client_a) as fleet:
        results = await fleet.run("cat", input=b"to everyone\n")
    assert [h.text for h in results] == ["to everyone\n"] * 2


async def test_an_unexpected_error_stays_with_its_host(farm: Farm, tmp_path: Path) -> None:
    (tmp_path / "n02").write_text("a file where n02's directory would go")
    async with tether.connect_many("n02,n03", home=farm.client_a) as fleet:
        results = await fleet.get("nothing-here.txt", tmp_path)
    assert results.by_name("n02").kind == "error"
    assert "File exists" in (results.by_name("n02").error or "")
    assert results.by_name("n03").kind == "error"  # the remote file is missing: its own error
    assert "nothing-here.txt" in (results.by_name("n03").error or "")
