"""Byte-identical put and get round trips over real TLS on loopback, with mode and mtime kept.

Sizes straddle the 1 MiB chunk and the 4 MiB flow-control window, and a 2 GiB sparse file (slow)
shows that a multi-GiB transfer is streamed and exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tether

from .conftest import ServeFactory
from .helpers import HOST, Identities, MiB, Rig, make_file, same_bytes

MTIME_NS = 1_600_000_000_123_456_789

SIZES = [0, 1, 2, 4095, MiB - 1, MiB, MiB + 1, 4 * MiB + 7, 9 * MiB - 3]


@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
async def test_put_then_get_is_byte_identical(api: tether.Connection, rig: Rig, work: Path,
                                              size: int) -> None:
    src = make_file(work / "local" / "data.bin", size, seed=size, mode=0o640, mtime_ns=MTIME_NS)

    put = await api.put(src, "data.bin")
    remote = rig.root / "data.bin"
    assert put.files[0].size == size
    assert put.files[0].hash.startswith("blake3:")
    assert same_bytes(src, remote)
    st = remote.stat()
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == MTIME_NS

    back = work / "back.bin"
    got = await api.get("data.bin", back)
    assert got.files[0].hash == put.files[0].hash
    assert same_bytes(src, back)
    st = back.stat()
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == MTIME_NS
    # only the final names: no partial file is left on either side
    assert sorted(os.listdir(rig.root)) == ["data.bin"]
    assert sorted(os.listdir(work / "local")) == ["data.bin"]
    assert not list(work.glob(".*.tether-part"))


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755, 0o700, 0o444])
async def test_mode_bits_kept_both_ways(api: tether.Connection, rig: Rig, work: Path,
                                        mode: int) -> None:
    src = make_file(work / f"m{mode:o}", 100, mode=mode, mtime_ns=MTIME_NS + mode)
    await api.put(src, "m")
    assert (rig.root / "m").stat().st_mode & 0o777 == mode
    assert (rig.root / "m").stat().st_mtime_ns == MTIME_NS + mode

    os.chmod(rig.root / "m", mode ^ 0o011)  # the server's copy now differs from the source
    os.utime(rig.root / "m", ns=(MTIME_NS - 5, MTIME_NS - 5))
    await api.get("m", work / "back")
    assert (work / "back").stat().st_mode & 0o777 == mode ^ 0o011
    assert (work / "back").stat().st_mtime_ns == MTIME_NS - 5


async def test_many_round_trips_on_one_connection(api: tether.Connection, rig: Rig,
                                                  work: Path) -> None:
    sources = [make_file(work / "src" / f"f{i}", i * 9973, seed=i) for i in range(12)]
    for src in sources:
        await api.put(src, src.name)
    (work / "back").mkdir()
    for src in sources:
        await api.get(src.name, work / "back")  # an existing directory receives it by name
        assert same_bytes(src, work / "back" / src.name)


@pytest.mark.slow
async def test_two_gib_sparse_file_round_trip(serve: ServeFactory, ids: Identities,
                                              work: Path) -> None:
    """2 GiB (a sparse file with data islands at the start, the middle, an odd offset and the
    last byte) goes up to a ``tether serve`` process and comes back identical."""
    size = 2 * 1024 * MiB
    src = work / "sparse.img"
    with src.open("wb") as fh:
        fh.truncate(size)
        for offset, data in [(0, b"head" * 1000), (size // 2 - 3, os.urandom(MiB + 5)),
                             (1_500_000_001, b"odd offset"), (size - 1, b"\xff")]:
            fh.seek(offset)
            fh.write(data)
    os.utime(src, ns=(MTIME_NS, MTIME_NS))
    server = serve()
    remote = server.root / "sparse.img"
    back = work / "back.img"
    try:
        async with tether.connect(HOST, server.port, home=ids.client_home,
                                  accept_new=True) as conn:
            put = await conn.put(src, "sparse.img")
            assert put.files[0].size == size
            assert remote.stat().st_mtime_ns == MTIME_NS
            assert same_bytes(src, remote)
            got = await conn.get("sparse.img", back)
        assert got.files[0].hash == put.files[0].hash
        assert back.stat().st_mtime_ns == MTIME_NS
        assert same_bytes(src, back)
    finally:
        for path in (src, remote, back):
            path.unlink(missing_ok=True)
