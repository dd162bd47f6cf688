"""The byte budget per identity (``serve --max-buffered-per-client``) holds across the
privilege-separated workers of one identity (root only): each worker serves one connection in
its own process, so only a count all workers share can bind."""

from __future__ import annotations

import pwd
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hostile.rawclient import RawClient, msg_frame
from tether.home import signed_cert_file
from tether.identity import load_identity
from tether.protocol import Connection, Hello, Role
from tether.protocol.frames import encode_data_prefix
from tether.tls import client_context_files

from .accounts import accounts_fixture, needs_root
from .lab import Lab, tether

pytestmark = needs_root

MiB = 1024 * 1024


@pytest.fixture
def accounts() -> Iterator[list[pwd.struct_passwd]]:
    yield from accounts_fixture(1)


def _workers_uss(uid: int) -> int:
    """Private memory of the account's processes (its workers, and their commands)."""
    total = 0
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is not None and uids.real == uid:
            try:
                total += proc.memory_full_info().uss
            except psutil.Error:
                continue
    return total


def _send_until_blocked(client: RawClient, frames: list[bytes], patience: float) -> int:
    client.sock.settimeout(patience)
    sent = 0
    try:
        for frame in frames:
            client.sock.sendall(frame)
            sent += len(frame)
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    return sent


def test_unread_stdin_over_the_workers_of_one_identity(
        lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    """6 connections mapped to one account (6 workers) x 4 commands that never read stdin, each
    sent its 4 MiB window: 96 MiB across workers that each stay under a budget of their own.
    The shared count stops them all near the identity's 16 MiB."""
    build = accounts[0]
    server = lab.server("s", "--max-buffered-per-client", str(16 * MiB),
                        principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    bob = lab.client("bob", ("dev",))
    ctx = client_context_files(signed_cert_file(alice), load_identity(alice).key_path)
    clients = []
    for _ in range(6):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        client = RawClient(ctx.wrap_socket(raw))
        client.sock.sendall(Connection(Role.CLIENT).send(
            Hello(versions=[1], user=build.pw_name)))
        welcome = client.frames(1)
        assert welcome and welcome[0].header["t"] == "welcome", welcome
        client.send(b"".join(msg_frame({"t": "exec", "argv": ["sleep", "60"]}, stream=2 * n + 1)
                             for n in range(4)))
        clients.append(client)
    time.sleep(1.5)  # the commands start
    before = _workers_uss(build.pw_uid)
    chunk = b"\x5a" * MiB
    sent = 0
    for client in clients:
        sent += _send_until_blocked(
            client, [encode_data_prefix(2 * n + 1, 0, MiB) + chunk
                     for n in range(4) for _ in range(4)], 1.5)
    time.sleep(1)
    during = _workers_uss(build.pw_uid)
    honest = lab.run(bob, server, "echo", "ok", host=f"{build.pw_name}@127.0.0.1",
                     opts=("--accept-new",))
    print(f"\n[6 workers x 4 commands never reading stdin, {sent / MiB:.0f} MiB sent] "
          f"workers' USS {before / MiB:.1f} -> {during / MiB:.1f} MiB")
    assert honest.returncode == 0 and honest.stdout == b"ok\n", honest.stderr
    assert "byte budget binds for " in server.log_text()
    assert sent < 6 * 16 * MiB, "the workers kept reading stdin nobody read"
    assert during - before < 48 * MiB, (before, during)
    for client in clients:
        client.close()
    assert "Traceback" not in server.log_text()


def test_a_worker_forked_after_the_server_used_its_disk_pool_has_one_of_its_own(
        lab: Lab, accounts: list[pwd.struct_passwd], tmp_path: Path) -> None:
    """The server's disk pool (threads) and its per-identity shares (bound to its event loop)
    do not survive a fork: a worker forked after an unmapped client's get had made them must
    make its own, or its first file work waits for threads that do not exist."""
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\nops\n")
    carol = lab.client("carol", ("ops",))  # the server's own account: served in its process
    alice = lab.client("alice", ("dev",))
    (server.root / "big.bin").write_bytes(b"\x01" * (3 * MiB))
    got = tether("get", "-p", str(server.port), "--accept-new", "127.0.0.1:big.bin",
                 str(tmp_path / "big.bin"), home=carol)
    assert got.returncode == 0, got.stderr
    tree = Path(tempfile.mkdtemp(prefix="tether-tree-"))
    try:
        tree.chmod(0o755)
        for i in range(10):
            (tree / f"f{i}").write_bytes(b"x" * (100 + i))
        put = tether("put", "-r", "-p", str(server.port), "--accept-new", str(tree),
                     f"{build.pw_name}@127.0.0.1:tree", home=alice, timeout=30)
        assert put.returncode == 0, put.stderr
        assert len(list((Path(build.pw_dir) / "tree").iterdir())) == 10
    finally:
        shutil.rmtree(tree, ignore_errors=True)
