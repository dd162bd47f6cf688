"""The hash caches of ``sync --checksum`` (storage/hashcache.py), end to end against a real
server on loopback: a second ``--checksum`` sync of an unchanged tree reads no file content on
either side (push and pull, the API and the CLI); a file whose content changed with its size and
mtime restored is still found; a racy file is read again; a corrupt cache is ignored; the
server's cache is out of every client's reach; ``--no-hash-cache`` reads everything.

The proof that nothing is read is the kernel's count of bytes this process read
(``rchar`` in /proc/self/io): the client and the in-process server are both this process (a CLI
client is a child, whose count the kernel adds to ours when it is reaped), so a sync that read
the tree on either side reads at least its size; the controls with the cache off show that the
count sees those reads.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

import tether
from tether.errors import PermissionDenied, TetherError
from tether.storage import hashcache
from tether.storage.hashcache import cache_dir
from tether.storage.sigcache import Signatures

from .helpers import HOST, MiB, Rig, arun_cli, make_file, same_bytes, snapshot

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/io"),
                                reason="counts the bytes read through /proc/self/io (Linux)")

BIG_BYTES = 4 * 2 * MiB  # what make_tree writes: large files...
TREE_BYTES = BIG_BYTES + 24 * 100_000  # ...and small ones
SETTLE = 3 * hashcache.TICK_NS / 1e9  # longer than the racy window: what was read is trusted


def make_tree(root: Path) -> Path:
    """Four large files (sent whole, or as deltas) and 24 small ones (sent in batches)."""
    for i in range(4):
        make_file(root / "big" / f"b{i}.bin", 2 * MiB, seed=i)
    for i in range(24):
        make_file(root / "small" / f"d{i % 3}" / f"s{i}.bin", 100_000, seed=100 + i)
    return root


def rchar() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def read_during(sync: object) -> int:
    """The bytes this process (client and in-process server) read while ``sync`` ran."""
    before = rchar()
    await sync  # type: ignore[misc]
    return rchar() - before


@pytest.fixture
async def src(work: Path) -> Path:
    tree = make_tree(work / "src")
    await asyncio.sleep(SETTLE)
    return tree


async def warm_push(api: tether.Connection, src: Path) -> None:
    """A first sync, then a --checksum one that leaves both caches knowing every file."""
    await api.sync(f"{src}/", "dest")
    await asyncio.sleep(SETTLE)  # the files the destination wrote are no longer racy
    await api.sync(f"{src}/", "dest", checksum=True)


def server_caches(rig: Rig) -> list[Path]:
    where = Path(cache_dir(rig.home))
    return sorted(where.glob("*.hc")) if where.is_dir() else []


def cache_file_of(home: Path, root: Path) -> Path:
    st = os.stat(root)
    return Path(cache_dir(home)) / f"{st.st_dev:x}-{st.st_ino:x}.hc"


async def test_a_second_checksum_push_of_an_unchanged_tree_reads_no_content(
        api: tether.Connection, rig: Rig, src: Path) -> None:
    await api.sync(f"{src}/", "dest")
    await asyncio.sleep(SETTLE)
    first = await read_during(api.sync(f"{src}/", "dest", checksum=True))
    # the server read the tree; the client learned the large files' hashes while it sent them
    # whole (over TLS small files travel unhashed, so it reads those)
    assert TREE_BYTES <= first < 2 * TREE_BYTES - BIG_BYTES + MiB
    before = rchar()
    result = await api.sync(f"{src}/", "dest", checksum=True)
    assert rchar() - before < MiB  # neither side read the 10 MiB tree
    assert (result.sent, result.bytes_sent, result.entries) == (0, 0, [])
    assert result.skipped == 24 + 4 + 5  # files and directories
    off = await read_during(api.sync(f"{src}/", "dest", checksum=True, hash_cache=False))
    assert off >= 2 * TREE_BYTES  # the control: without the caches both sides read it all
    assert snapshot(rig.root / "dest") == snapshot(src)
    assert cache_file_of(rig.client_home, src).is_file()
    assert cache_file_of(rig.home, rig.root / "dest") in server_caches(rig)


async def test_a_second_checksum_pull_of_an_unchanged_tree_reads_no_content(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    make_tree(rig.root / "remote")
    await asyncio.sleep(SETTLE)
    local = work / "local"
    await api.sync("remote/", str(local), pull=True, checksum=True)
    await asyncio.sleep(SETTLE)
    await api.sync("remote/", str(local), pull=True, checksum=True)
    read = await read_during(api.sync("remote/", str(local), pull=True, checksum=True))
    assert read < MiB
    assert snapshot(local) == snapshot(rig.root / "remote")
    assert cache_file_of(rig.client_home, local).is_file()
    assert cache_file_of(rig.home, rig.root / "remote") in server_caches(rig)


async def restore_changed(path: Path, seed: int) -> None:
    """New content of the same size, with the old mtime put back (``touch -r``)."""
    st = path.stat()
    make_file(path, st.st_size, seed=seed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


async def test_a_change_with_size_and_mtime_restored_is_found_on_either_side(
        api: tether.Connection, rig: Rig, src: Path, work: Path) -> None:
    await warm_push(api, src)
    await restore_changed(src / "big" / "b1.bin", seed=51)  # at the source
    await restore_changed(rig.root / "dest" / "small" / "d0" / "s3.bin", seed=52)  # the dest's
    result = await api.sync(f"{src}/", "dest", checksum=True)
    assert sorted((e.path, e.action) for e in result.entries) == [
        ("big/b1.bin", "delta"), ("small/d0/s3.bin", "update")]
    assert snapshot(rig.root / "dest") == snapshot(src)
    # a pull: the server is the source, the client's copy the destination
    local = work / "back"
    await api.sync("dest/", str(local), pull=True, checksum=True)
    await asyncio.sleep(SETTLE)
    await api.sync("dest/", str(local), pull=True, checksum=True)
    await restore_changed(rig.root / "dest" / "small" / "d1" / "s4.bin", seed=53)
    await restore_changed(local / "big" / "b2.bin", seed=54)
    pulled = await api.sync("dest/", str(local), pull=True, checksum=True)
    assert sorted((e.path, e.action) for e in pulled.entries) == [
        ("big/b2.bin", "delta"), ("small/d1/s4.bin", "update")]
    assert snapshot(local) == snapshot(rig.root / "dest")


async def test_a_racy_file_is_read_again(api: tether.Connection, rig: Rig, src: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Read within the racy window after their ctime (here: a window of an hour), files are
    compared by the hashes just read, and read again by the next sync."""
    monkeypatch.setattr(hashcache, "TICK_NS", 3600 * 1_000_000_000)
    await api.sync(f"{src}/", "dest")
    for _ in range(2):
        read = await read_during(api.sync(f"{src}/", "dest", checksum=True))
        assert read >= 2 * TREE_BYTES
    monkeypatch.setattr(hashcache, "TICK_NS", 0)  # now every read is trusted
    assert await read_during(api.sync(f"{src}/", "dest", checksum=True)) >= 2 * TREE_BYTES
    assert await read_during(api.sync(f"{src}/", "dest", checksum=True)) < MiB


async def test_a_corrupt_cache_is_ignored(api: tether.Connection, rig: Rig, src: Path) -> None:
    await warm_push(api, src)
    spoiled = [cache_file_of(rig.client_home, src), *server_caches(rig)]
    assert len(spoiled) == 2
    for path in spoiled:
        data = bytearray(path.read_bytes())
        data[len(data) // 2:] = os.urandom(len(data) - len(data) // 2)
        path.write_bytes(bytes(data))
    read = await read_during(api.sync(f"{src}/", "dest", checksum=True))
    assert read >= 2 * TREE_BYTES  # both sides read again, and nothing failed
    assert await read_during(api.sync(f"{src}/", "dest", checksum=True)) < MiB  # rewritten
    assert snapshot(rig.root / "dest") == snapshot(src)


async def test_the_servers_cache_is_out_of_every_clients_reach(
        api: tether.Connection, rig: Rig, src: Path, work: Path) -> None:
    await warm_push(api, src)
    [cache] = server_caches(rig)
    before = cache.read_bytes()
    with pytest.raises(PermissionDenied, match="out of every client's reach"):
        await api.get(str(cache), work / "stolen")
    with pytest.raises(PermissionDenied):
        await api.put(src / "big" / "b0.bin", str(cache), force=True)
    with pytest.raises(PermissionDenied):
        await api.sync(f"{cache.parent}/", str(work / "pulled"), pull=True)
    with pytest.raises(PermissionDenied):
        await api.sync(f"{src}/", str(cache.parent))
    with pytest.raises(PermissionDenied):
        await api.sync(str(src / "big" / "b0.bin"), str(cache))
    assert cache.read_bytes() == before
    assert not (work / "stolen").exists() and not (work / "pulled").exists()


async def test_the_cli_reuses_hashes_and_no_hash_cache_reads_everything(
        rig: Rig, src: Path) -> None:
    remote = f"{HOST}:dest"
    common = ("-p", str(rig.port), "--accept-new", "--json", "-c")
    first = await arun_cli("sync", *common, f"{src}/", remote, home=rig.client_home)
    assert first.returncode == 0, first.stderr
    await asyncio.sleep(SETTLE)
    await arun_cli("sync", *common, f"{src}/", remote, home=rig.client_home)
    # the server is this process, and the CLI's reads are added to ours when it is reaped
    before = rchar()
    again = await arun_cli("sync", *common, f"{src}/", remote, home=rig.client_home)
    cached = rchar() - before
    assert again.returncode == 0 and json.loads(again.stdout)["sent"] == 0
    assert cached < TREE_BYTES  # the CLI's own start-up included: not even one side's tree
    assert cache_file_of(rig.client_home, src).is_file()
    before = rchar()
    off = await arun_cli("sync", *common, "--no-hash-cache", f"{src}/", remote,
                         home=rig.client_home)
    assert off.returncode == 0, off.stderr
    assert rchar() - before - cached >= 2 * TREE_BYTES - MiB  # both sides read the tree


async def test_without_a_cache_the_client_writes_none(rig: Rig, src: Path,
                                                      work: Path) -> None:
    home = work / "fresh-home"
    home.mkdir(mode=0o700)
    for name in ("id_key.pem", "id_cert.pem"):
        (home / name).write_bytes((rig.client_home / name).read_bytes())
    os.chmod(home / "id_key.pem", 0o600)
    args = ("sync", "-p", str(rig.port), "--accept-new", "-c")
    done = await arun_cli(*args, "--no-hash-cache", f"{src}/", f"{HOST}:dest", home=home)
    assert done.returncode == 0, done.stderr
    assert not (home / "cache").exists()
    done = await arun_cli(*args, f"{src}/", f"{HOST}:dest", home=home)
    assert done.returncode == 0, done.stderr
    assert cache_file_of(home, src).is_file()
    assert os.stat(cache_dir(home)).st_mode & 0o777 == 0o700


async def test_an_unusable_cache_directory_never_fails_a_sync(rig: Rig, src: Path,
                                                            work: Path) -> None:
    """The client's cache directory is a file and the server's cannot be made: both sides go
    on without a cache, every sync succeeds (and still compares content)."""
    home = work / "odd-home"
    home.mkdir(mode=0o700)
    for name in ("id_key.pem", "id_cert.pem"):
        (home / name).write_bytes((rig.client_home / name).read_bytes())
    os.chmod(home / "id_key.pem", 0o600)
    (home / "cache").write_bytes(b"not a directory")
    (rig.home / "cache").write_bytes(b"not a directory either")
    args = ("sync", "-p", str(rig.port), "--accept-new", "-c", "--json", f"{src}/",
            f"{HOST}:dest")
    for _ in range(2):
        done = await arun_cli(*args, home=home)
        assert done.returncode == 0, done.stderr
    await restore_changed(src / "big" / "b3.bin", seed=61)
    done = await arun_cli(*args, home=home)
    assert done.returncode == 0, done.stderr
    assert [e["path"] for e in json.loads(done.stdout)["entries"]] == ["big/b3.bin"]
    assert snapshot(rig.root / "dest") == snapshot(src)
    assert (home / "cache").read_bytes() == b"not a directory"


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def kept_signatures(home: Path) -> list[Path]:
    where = Path(cache_dir(home))
    return sorted(where.glob("*.sig")) if where.is_dir() else []


async def test_a_file_built_from_a_delta_keeps_its_signature(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    """The destination keeps the signature of a file it built from a delta (storage/sigcache.py):
    the next delta of it reads the old copy to build and verify, not to describe it first. The
    replaced file's signature goes with it; ``--no-hash-cache`` uses, keeps and drops none."""
    size = 16 * MiB
    src = make_file(work / "s" / "big.bin", size, seed=5)
    await api.sync(f"{work / 's'}/", "dest")  # whole: nothing to derive a signature from
    assert kept_signatures(rig.home) == []
    patch(src, 8 * MiB, os.urandom(4096))
    read = await read_during(api.sync(f"{work / 's'}/", "dest"))  # its old copy read to sign it
    [kept] = kept_signatures(rig.home)
    patch(src, 4 * MiB, os.urandom(4096))
    before = rchar()
    result = await api.sync(f"{work / 's'}/", "dest")
    assert rchar() - before <= read - size + MiB  # one whole read fewer: the signature's
    assert [(e.path, e.action) for e in result.entries] == [("big.bin", "delta")]
    assert result.bytes_sent < MiB and result.bytes_matched > size - MiB
    assert same_bytes(src, rig.root / "dest" / "big.bin")
    [now] = kept_signatures(rig.home)
    assert now != kept  # the old copy's went with it
    patch(src, 2 * MiB, os.urandom(4096))
    off = await read_during(api.sync(f"{work / 's'}/", "dest", hash_cache=False))
    assert off >= read - MiB  # the control: without the cache the old copy is read to sign it
    assert kept_signatures(rig.home) == [now]  # nor kept nor dropped (now a dead key: it ages out)
    assert same_bytes(src, rig.root / "dest" / "big.bin")


async def test_a_stale_signature_fails_its_file_once_and_is_dropped(
        api: tether.Connection, rig: Rig, work: Path) -> None:
    """A kept signature that no longer describes its file (written in place with its size,
    inode and mtime kept, within the clock tick of the sync's rename: the one way it could
    happen, made here by writing the entry under the file's new key) builds a wrong file, which
    the whole-file check refuses before anything is moved into place; the entry is dropped, and
    the same sync run again succeeds."""
    src = make_file(work / "s" / "big.bin", 4 * MiB, seed=6)
    await api.sync(f"{work / 's'}/", "dest")
    patch(src, MiB, os.urandom(4096))
    await api.sync(f"{work / 's'}/", "dest")
    dest = rig.root / "dest" / "big.bin"
    signatures = Signatures(cache_dir(rig.home))
    old_st = dest.stat()
    stale = signatures.get(old_st)
    assert stale is not None
    patch(dest, MiB, bytes(MiB))  # an in-place writer...
    os.utime(dest, ns=(old_st.st_atime_ns, old_st.st_mtime_ns))  # ...that restored the mtime
    signatures.drop(old_st)
    signatures.put(dest.stat(), stale)
    patch(src, 3 * MiB, os.urandom(4096))
    with pytest.raises(TetherError, match="does not match the sender's hash"):
        await api.sync(f"{work / 's'}/", "dest")
    assert signatures.get(dest.stat()) is None and kept_signatures(rig.home) == []
    assert dest.read_bytes()[MiB:2 * MiB] == bytes(MiB)  # nothing was moved into place
    result = await api.sync(f"{work / 's'}/", "dest")
    assert [(e.path, e.action) for e in result.entries] == [("big.bin", "delta")]
    assert same_bytes(src, dest)
