"""A sync served by a privilege-separated worker (root only): the worker, running as the
account, keeps no hash cache — it can neither read nor write the server's TETHER_HOME, and a
cache of root's hashes must never serve an account — while the server's own sessions keep theirs
under that home (storage/hashcache.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .accounts import accounts_fixture, needs_root
from .lab import Lab, ok, tether

pytestmark = needs_root


@pytest.fixture
def accounts() -> Iterator[list[pwd.struct_passwd]]:
    yield from accounts_fixture(1)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-hashcache-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def caches_of(home: Path) -> list[Path]:
    where = home / "cache" / "hashes"
    return sorted(where.glob("*.hc")) if where.is_dir() else []


def test_a_worker_keeps_no_hash_cache_and_the_servers_own_session_does(
        lab: Lab, accounts: list[pwd.struct_passwd], open_dir: Path) -> None:
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\nops\n")
    alice = lab.client("alice", ("dev",))  # mapped to build: a worker serves her
    bob = lab.client("bob", ("ops",))  # the server's own account
    src = open_dir / "src"
    for i in range(6):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 2}" / f"f{i}").write_bytes(os.urandom(50_000 + i))
    time.sleep(0.2)  # older than the racy window: what is read may be kept
    port = ("-p", str(server.port), "--accept-new")
    for _ in range(2):
        ok(tether("sync", "-c", *port, f"{src}/", f"{build.pw_name}@127.0.0.1:dest",
                  home=alice))
    dest = Path(build.pw_dir) / "dest"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("f*")) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("f*"))
    assert {p.stat().st_uid for p in dest.rglob("*")} == {build.pw_uid}
    assert caches_of(server.home) == []
    assert not (Path(build.pw_dir) / "cache").exists()
    ok(tether("sync", "-c", *port, f"{src}/", "127.0.0.1:dest", home=bob))
    time.sleep(0.2)
    ok(tether("sync", "-c", *port, f"{src}/", "127.0.0.1:dest", home=bob))
    kept = caches_of(server.home)
    assert len(kept) == 1 and kept[0].stat().st_uid == 0
    assert (server.home / "cache" / "hashes").stat().st_mode & 0o777 == 0o700
