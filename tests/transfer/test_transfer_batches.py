"""Trees of small files travel in batches (docs/PROTOCOL.md, "Batches"): many files per stream,
each with its own hash. Everything a per-file transfer guarantees still holds: bytes, modes and
mtimes kept; a file that does not verify is never stored under its name and is reported; a
confined client's batch names cannot leave its root; a cut batch leaves no final name holding
less than the whole file, and running the transfer again (with --force) completes it;
--force and --rename act per file; the audit log has one record per file.

Hostile-server cases for ``get -r`` (a lying ``files`` answer, corrupted bytes, hostile names in
a batched listing) are in test_transfer_hostile_server.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

import tether
from tether.errors import AlreadyExists, BadRequest, IntegrityError, UnsafePath
from tether.protocol import Batch, Data, Done, Fetch
from tether.server.listener import Server, ServerConfig
from tether.storage.batch import SMALL_FILE
from tether.storage.source import file_hash

from .conftest import RigFactory, ServeFactory
from .helpers import (
    HOST,
    ClientSpec,
    Identities,
    Rig,
    arun_cli,
    kill9,
    listing,
    make_file,
    popen_cli,
    run_cli,
    snapshot,
    wait_until,
)

T0 = 1_650_000_000_123_456_789
NAMES = ["plain.txt", "with space.bin", "ünïcødé ✓.txt", "'quoted' \"name\"", ".hidden",
         "tab\there", "nl\nname"]


def small_tree(root: Path, per_dir: int = 120) -> Path:
    """Several directories of small files (and a few empty and large ones), enough for many
    batches, with assorted names, modes and mtimes."""
    for d, sub in enumerate(["", "a", "a/b b", "ç/d", "many"]):
        for i in range(per_dir):
            name = NAMES[i % len(NAMES)].replace(".", f"{i}.", 1) if "." in NAMES[
                i % len(NAMES)] else f"{NAMES[i % len(NAMES)]} {i}"
            size = (i * 97 + d * 13) % 9000 if i % 11 else 0
            make_file(root / sub / name, size, seed=d * 1000 + i,
                      mode=(0o600, 0o644, 0o755, 0o640, 0o400)[i % 5],
                      mtime_ns=T0 + d * 10**9 + i * 1_000_003)
    make_file(root / "a" / "large.bin", SMALL_FILE + 1, seed=7, mtime_ns=T0)
    make_file(root / "at the limit.bin", SMALL_FILE, seed=8, mtime_ns=T0)
    (root / "empty dir" / "deeper").mkdir(parents=True)
    os.symlink("a/b b", root / "link")
    return root


def streams_used(conn: tether.Connection) -> int:
    """Streams opened so far on ``conn`` (ids are 1, 3, 5, ...)."""
    return (conn._framed.proto.next_stream_id() - 1) // 2


async def test_many_small_files_round_trip_both_ways(api: tether.Connection, rig: Rig,
                                                     work: Path) -> None:
    src = small_tree(work / "src tree")
    expected = snapshot(src)
    files = sum(1 for v in expected.values() if v[0] == "file")
    assert files == 602

    before = streams_used(api)
    put = await api.put(src, "up", recursive=True)
    assert snapshot(rig.root / "up") == expected  # bytes, modes, mtimes, links, empty dirs
    assert streams_used(api) - before < files // 10  # batches, not a stream per file
    stored = {f.path: f for f in put.files if f.kind == "file"}
    assert len(stored) == files
    assert stored["up/a/b b/plain0.txt"].hash == file_hash((src / "a/b b/plain0.txt")
                                                            .read_bytes())

    before = streams_used(api)
    got = await api.get("up", work / "down", recursive=True)
    assert snapshot(work / "down") == expected
    assert streams_used(api) - before < files // 10
    assert sum(1 for f in got.files if f.kind == "file") == files
    assert not [p for p in listing(work / "down") if p.endswith(".tether-part")]
    assert not [p for p in listing(rig.root) if p.endswith(".tether-part")]


def hashes_of(datas: list[bytes]) -> list[str]:
    return [file_hash(d) for d in datas]


async def send_raw_batch(conn: tether.Connection, path: str, names: list[str],
                         datas: list[bytes], hashes: list[str] | None = None,
                         **flags: bool) -> Done:
    """A batch as a client could craft it (hashes included), through the real connection."""
    handle = conn.open_stream(Batch, path=path, names=names, sizes=[len(d) for d in datas],
                              modes=[0o644] * len(datas), mtimes=[T0] * len(datas),
                              hashes=hashes or hashes_of(datas), **flags)
    try:
        if any(datas):
            await handle.send_data(b"".join(datas))
        event = await handle.next()
    finally:
        handle.abandon()
    assert isinstance(event, Done)
    return event


async def test_a_corrupted_file_in_a_batch_is_not_stored_and_is_named(
        api: tether.Connection, rig: Rig) -> None:
    (rig.root / "box").mkdir()
    datas = [b"first file", b"second, corrupted on the way", b"third"]
    hashes = hashes_of(datas)
    hashes[1] = file_hash(b"what the sender meant to send")
    with pytest.raises(IntegrityError, match=r"box/two: data does not match the sender's "
                                             r"hash; nothing was stored under that name"):
        await send_raw_batch(api, "box", ["one", "two", "three"], datas, hashes)
    assert listing(rig.root / "box") == ["one", "three"]  # the others verified and stored
    assert (rig.root / "box" / "three").read_bytes() == b"third"
    done = await send_raw_batch(api, "box", ["two"], [datas[1]])  # the connection lives on
    assert done.names == ["box/two"]


async def test_a_malformed_batch_is_refused_before_anything_is_written(
        api: tether.Connection, rig: Rig) -> None:
    (rig.root / "box").mkdir()
    cases = {
        "lists differ in length": dict(sizes=[1], modes=[0o644, 0o644]),
        "negative size": dict(sizes=[-1, 1]),
        "too large": dict(sizes=[4 * 1024 * 1024, 1]),
    }
    for why, fields in cases.items():
        spec = dict(path="box", names=["a", "b"], sizes=[1, 1], modes=[0o644, 0o644],
                    mtimes=[0, 0], hashes=hashes_of([b"x", b"y"]))
        spec.update(fields)  # type: ignore[arg-type]
        handle = api.open_stream(Batch, **spec)
        with pytest.raises(BadRequest):
            await handle.next()
        assert listing(rig.root / "box") == [], why
    handle = api.open_stream(Batch, path="box", names=["a"], sizes=[1], modes=[0o644],
                             mtimes=[0], hashes=hashes_of([b"x"]))
    with pytest.raises(BadRequest, match="more data than the 1 bytes"):
        await handle.send_data(b"xy")
        await handle.next()
    assert listing(rig.root / "box") == []


async def test_a_cut_batch_leaves_no_final_name_short_and_a_rerun_completes(
        rig: Rig, work: Path) -> None:
    src = small_tree(work / "src", per_dir=60)
    (rig.root / "dest").mkdir()
    datas = [bytes([i]) * 3000 for i in range(40)]
    names = [f"f{i:02}" for i in range(40)]
    async with rig.connect() as conn:
        handle = conn.open_stream(Batch, path="dest", names=names, sizes=[3000] * 40,
                                  modes=[0o644] * 40, mtimes=[T0] * 40, hashes=hashes_of(datas))
        await handle.send_data(b"".join(datas)[: 3000 * 17 + 1234])  # 17.4 files, then cut
        await conn._framed.drain()
    # the connection is gone: what arrived whole is stored, nothing else, no partials
    for _ in range(500):
        if len(listing(rig.root / "dest")) >= 17:
            break
        await asyncio.sleep(0.01)
    stored = listing(rig.root / "dest")
    assert stored == names[:17]
    assert all((rig.root / "dest" / n).read_bytes() == datas[i] for i, n in enumerate(stored))

    async with rig.connect() as conn:  # a put -r cut mid-way, then run again with --force
        await conn.put(src, "dest", recursive=True)
        (rig.root / "dest" / "src" / "a" / "plain0.txt").unlink()
        (rig.root / "dest" / "src" / "many" / "with space1.bin").write_bytes(b"short")
        await conn.put(src, "dest", recursive=True, force=True)
    assert snapshot(rig.root / "dest" / "src") == snapshot(src)
    assert not [p for p in listing(rig.root) if p.endswith(".tether-part")]


async def test_force_and_rename_act_per_file_in_batches(api: tether.Connection, rig: Rig,
                                                        work: Path) -> None:
    src = work / "t"
    for i in range(30):
        make_file(src / f"f{i}.txt", 100 + i, seed=i)
    await api.put(src, ".", recursive=True)  # into the root, as "t"
    changed = make_file(src / "f3.txt", 50, seed=99)
    with pytest.raises(AlreadyExists, match=r"t/f\d+\.txt exists \(use --force"):
        await api.put(src, ".", recursive=True)
    renamed = await api.put(src, ".", recursive=True, rename=True)
    paths = {f.path for f in renamed.files if f.kind == "file"}
    assert "t/f3 (1).txt" in paths and (rig.root / "t" / "f3 (1).txt").read_bytes() == \
        changed.read_bytes()
    assert (rig.root / "t" / "f3.txt").read_bytes() != changed.read_bytes()
    await api.put(src, ".", recursive=True, force=True)
    assert (rig.root / "t" / "f3.txt").read_bytes() == changed.read_bytes()

    (work / "down").mkdir()
    await api.get("t", work / "down", recursive=True)
    with pytest.raises(AlreadyExists, match="exists"):
        await api.get("t", work / "down", recursive=True)
    again = await api.get("t", work / "down", recursive=True, rename=True)
    # the server holds f4.txt and f4 (1).txt (the put --rename): here they take the next names
    assert str(work / "down" / "t" / "f4 (2).txt") in {f.path for f in again.files}
    assert (work / "down" / "t" / "f4 (2).txt").read_bytes() == \
        (rig.root / "t" / "f4.txt").read_bytes()
    (work / "down" / "t" / "f4.txt").write_bytes(b"local change")
    await api.get("t", work / "down", recursive=True, force=True)
    assert (work / "down" / "t" / "f4.txt").read_bytes() == (src / "f4.txt").read_bytes()
    assert not [p for p in listing(work / "down") if p.endswith(".tether-part")]


@pytest.fixture
async def jailed(make_rig: RigFactory, work: Path) -> tuple[Rig, ClientSpec, Path, Path]:
    jail, outside = work / "jail", work / "outside"
    for path in (jail, outside):
        path.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    spec = ClientSpec("jailed", root=str(jail), permissions=frozenset({"put", "get"}))
    rig = await make_rig(root=work / "server-root", clients=[spec])
    return rig, spec, jail, outside


ESCAPES = [(".", ["../x"]), (".", ["a/../../x"]), (".", ["a/", "b"]), (".", ["/x"]),
           (".", ["a/./b"]), ("..", ["x"]), ("../outside", ["x"]), ("{outside}", ["x"]),
           (".", ["out/x"]), (".", ["rel out/x"]), ("out", ["x"]), (".", ["nul\0x"]),
           (".", ["back\\slash"]), (".", [""])]


@pytest.mark.parametrize(("base", "names"), ESCAPES)
async def test_a_confined_batch_stays_inside_its_root(
        jailed: tuple[Rig, ClientSpec, Path, Path], base: str, names: list[str]) -> None:
    rig, spec, jail, outside = jailed
    os.symlink(outside, jail / "out")
    os.symlink("../outside", jail / "rel out")
    (jail / "a").mkdir()
    base = base.format(outside=outside)
    datas = [b"payload"] * len(names)
    async with rig.connect(spec.home) as conn:
        with pytest.raises(UnsafePath):
            await send_raw_batch(conn, base, names, datas, force=True)
        handle = conn.open_stream(Fetch, path=base, names=[*names, "secret.txt"])
        with pytest.raises(UnsafePath):
            await handle.next()
        await send_raw_batch(conn, "a", ["fine"], [b"ok"])  # still serving this client
    assert listing(outside) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert listing(jail) == ["a", "a/fine", "out", "rel out"]


async def test_json_summary_and_audit_of_a_batched_tree(make_rig: RigFactory, ids: Identities,
                                                        work: Path) -> None:
    rig = await make_rig()
    await rig.server.close()
    audit = work / "audit.jsonl"
    server = Server(ServerConfig(home=rig.home, port=0, root=rig.root, audit=audit), ids.server)
    await server.start()
    try:
        src = small_tree(work / "tree", per_dir=20)
        port = str(server.port)
        done = await arun_cli("put", "-p", port, "--accept-new", "--json", "-r", str(src),
                              "127.0.0.1:", home=ids.client_home)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["files"] == 102
        assert summary["bytes"] == sum(p.stat().st_size for p in src.rglob("*")
                                       if stat.S_ISREG(p.lstat().st_mode))
        assert {e["path"] for e in summary["entries"] if e["kind"] == "file"} == {
            f"tree/{p.relative_to(src).as_posix()}" for p in src.rglob("*")
            if stat.S_ISREG(p.lstat().st_mode)}
        done = await arun_cli("get", "-p", port, "--json", "-r", "127.0.0.1:tree",
                              str(work / "back"), home=ids.client_home)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["files"] == 102
        assert snapshot(work / "back") == snapshot(src)
    finally:
        await server.close()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    for op in ("put", "get"):
        records = [e for e in events if e["event"] == "transfer" and e["op"] == op
                   and e["hash"]]  # a put also records its directories and links, unhashed
        assert len(records) == 102, op
        one = next(e for e in records if e["path"].endswith("a/b b/plain0.txt"))
        assert one["hash"] == file_hash((src / "a" / "b b" / "plain0.txt").read_bytes())
        assert one["outcome"] == "ok"


async def test_long_names_that_json_escapes_still_fit_a_batch_header(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    """Names of 240 bytes (what a partial's name leaves of 255) that JSON writes six times as
    long (control characters), or twice (quotes): every batch header stays within its cap."""
    src = work / "odd"
    for i in range(120):
        make_file(src / (chr(1 + i % 30) * 239 + chr(65 + i % 26)) if i % 2 else
                  src / (f"{i:03}" + '"' * 237), 10 + i, seed=i)
    await api.put(src, "odd", recursive=True)
    assert snapshot(rig.root / "odd") == snapshot(src)
    await api.get("odd", work / "back", recursive=True)
    assert snapshot(work / "back") == snapshot(src)


def test_kill9_mid_put_r_then_rerun(serve: ServeFactory, ids: Identities, work: Path) -> None:
    """``tether put -r`` killed with SIGKILL while batches are arriving: every file that
    has a name at the destination is whole, there is no partial file, and the same command
    with --force completes the tree."""
    server = serve()
    src = work / "big tree"
    for i in range(6000):
        make_file(src / f"{i // 500:02}" / f"file {i:05}.bin", 4096 + i % 7, seed=i)
    args = ["put", "-r", "-p", str(server.port), "--accept-new", str(src), f"{HOST}:"]
    proc = popen_cli(*args, home=ids.client_home, log=work / "put.log")
    dest = server.root / "big tree"

    def some_arrived() -> bool:
        return proc.poll() is not None or len(listing(dest)) > 300

    assert wait_until(some_arrived, timeout=60, interval=0.001)
    assert proc.poll() is None, "the put ended before it could be killed"
    kill9(proc)
    arrived = [p for p in listing(dest) if p.endswith(".bin")]
    assert 0 < len(arrived) < 6000
    # once the server has seen the connection end, no batch is being stored any more
    assert wait_until(lambda: "disconnected" in server.log_text(), timeout=30)
    assert not [p for p in listing(dest) if "tether-part" in p]
    for rel in listing(dest):
        if rel.endswith(".bin"):
            assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
    done = run_cli(*args[:1], "--force", *args[1:], home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert snapshot(dest) == snapshot(src)
    assert server.alive()


async def test_many_fetches_at_once_all_complete(api: tether.Connection, rig: Rig) -> None:
    """More fetches than the server reads at once (it holds four): the others wait their turn,
    and every one gets its files."""
    for i in range(20):
        make_file(rig.root / "src" / f"d{i}" / "f", 1000 + i, seed=i)

    async def fetch(i: int) -> bytes:
        handle = api.open_stream(Fetch, path="src", names=[f"d{i}/f"])
        got = b""
        try:
            while not isinstance(event := await handle.next(), Done):
                if isinstance(event, Data):
                    got += event.data
        finally:
            handle.abandon()
        return got

    results = await asyncio.gather(*(fetch(i) for i in range(20)))
    assert results == [(rig.root / "src" / f"d{i}" / "f").read_bytes() for i in range(20)]
