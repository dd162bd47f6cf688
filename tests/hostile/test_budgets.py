"""Issue 13 items 3, 4, 5, 6 and 10 under load: a real ``tether serve`` (soft RLIMIT_NOFILE 1024,
as most shells and units give it) attacked on loopback, bounded in count and time, with the
server's RSS and descriptor count (psutil) asserted under the budgets docs/SECURITY.md names
while an honest ``tether run`` is served. Each test prints its figures (``-s`` shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from support import TETHER, ServeProcess, start_serve
from tether.identity import AuthorizedClient, Identity, add_authorized, generate_identity
from tether.server.limits import Limits

from .rawclient import RawClient, msg_frame

MiB = 1024 * 1024
SOFT_NOFILE = 1024


@dataclass
class Rig:
    server: ServeProcess
    honest_home: Path
    jail: Path
    putter: Identity
    getter: Identity
    full: Identity

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.server.pid)

    def figures(self) -> tuple[int, int]:
        """(RSS in bytes, open descriptors) of the server now."""
        proc = self.proc
        return proc.memory_info().rss, proc.num_fds()

    def honest_run(self, timeout: float = 20.0) -> float:
        """Seconds an honest ``tether run echo ok`` took (it must succeed)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env["TETHER_HOME"] = str(self.honest_home)
        started = time.monotonic()
        done = subprocess.run([*TETHER, "run", "-p", str(self.server.port), "--accept-new",
                               "127.0.0.1", "echo", "ok"], env=env, capture_output=True,
                              timeout=timeout, check=False)
        took = time.monotonic() - started
        assert done.returncode == 0 and done.stdout == b"ok\n", done.stderr
        return took


def _serve(tmp: Path, *extra: str, hard: int | None = None) -> Rig:
    """A server started at soft RLIMIT_NOFILE 1024 (and at hard ``hard`` when given, so that
    it cannot raise its soft limit)."""
    home, jail = tmp / "server", tmp / "jail"
    jail.mkdir()
    generate_identity(home, "server", "server")
    honest_home = tmp / "honest"
    honest = generate_identity(honest_home, "honest")
    add_authorized(home, AuthorizedClient(honest.cert_der, "honest"))
    ids = {}
    for name, perms in (("putter", {"put"}), ("getter", {"get"}), ("full", {"get", "exec"})):
        ids[name] = generate_identity(tmp / name, name)
        add_authorized(home, AuthorizedClient(ids[name].cert_der, name, root=str(jail),
                                              permissions=frozenset(perms)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    def limit() -> None:  # in the server's process only (a lowered hard limit is for good)
        hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_NOFILE, hard or hard_now))

    server = start_serve(home, tmp / "root", tmp / "serve.log", *extra, env=env, preexec=limit)
    return Rig(server, honest_home, jail, ids["putter"], ids["getter"], ids["full"])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = _serve(tmp_path)
    try:
        yield r
    finally:
        r.server.stop()


def _report(what: str, before: tuple[int, int], during: tuple[int, int]) -> None:
    print(f"\n[{what}] server RSS {before[0] / MiB:.1f} -> {during[0] / MiB:.1f} MiB, "
          f"descriptors {before[1]} -> {during[1]}")


def _raw(rig: Rig, identity: Identity) -> RawClient:
    client = RawClient.connect(rig.server.port, identity, timeout=20)
    client.handshake()
    return client


# --- items 3 and 4: stalled batches -----------------------------------------------------------

BATCH_FILES = 512
BATCH_FILE_SIZE = 8000


def _stalled_batches(rig: Rig, connections: int, per_connection: int) -> list[RawClient]:
    names = [f"d{i:03}/f" for i in range(BATCH_FILES)]
    header = {"t": "batch", "path": "", "names": names, "sizes": [BATCH_FILE_SIZE] * BATCH_FILES,
              "modes": [0o644] * BATCH_FILES, "mtimes": [0] * BATCH_FILES,
              "hashes": ["blake3:" + "0" * 64] * BATCH_FILES}
    encoded = json.dumps(header).encode()
    clients = []
    for _ in range(connections):
        client = _raw(rig, rig.putter)
        for n in range(per_connection):
            stream = 2 * n + 1
            client.send(msg_frame(encoded, stream=stream))
            # the first file whole and half of the second: that one waits, incomplete
            client.send(_data(stream, os.urandom(BATCH_FILE_SIZE + BATCH_FILE_SIZE // 2)))
        clients.append(client)
    return clients


def _data(stream: int, body: bytes) -> bytes:
    from tether.protocol.frames import encode_data_prefix
    return encode_data_prefix(stream, 0, len(body)) + body


def test_stalled_batches_hold_bounded_descriptors_and_memory(tmp_path: Path) -> None:
    rig = _serve(tmp_path, "--stall-timeout", "4")
    try:
        for i in range(BATCH_FILES):
            (rig.jail / f"d{i:03}").mkdir()
        before = rig.figures()
        clients = _stalled_batches(rig, connections=4, per_connection=64)
        time.sleep(1.5)
        during = rig.figures()
        took = rig.honest_run()
        _report("4 connections x 64 stalled batches of 512 files in 512 directories",
                before, during)
        # budget: 16 batches per connection x (base + 4 directories + 1 spool) + the socket
        assert during[1] - before[1] <= 4 * (16 * 6 + 1), during
        assert during[0] - before[0] < 64 * MiB, during
        assert took < 10
        # no progress for --stall-timeout: the batches are ended, their descriptors freed
        deadline = time.monotonic() + 15
        while rig.figures()[1] > before[1] + 4 * 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        after = rig.figures()
        print(f"[after the stall timeout] descriptors {after[1]}")
        assert after[1] <= before[1] + 4 * 2
        for client in clients:
            client.close()
    finally:
        rig.server.stop()


# --- item 4: unread listings --------------------------------------------------------------------

def test_unread_listings_of_a_large_directory(rig: Rig) -> None:
    big = rig.jail / "big"
    big.mkdir()
    for i in range(30_000):
        (big / f"entry-with-a-longish-name-{i:06}").touch()
    before = rig.figures()
    clients = []
    for _ in range(4):
        client = _raw(rig, rig.getter)
        for n in range(64):
            client.send(msg_frame({"t": "list", "path": "big", "batched": True},
                                  stream=2 * n + 1))
        clients.append(client)
    time.sleep(3)
    during = rig.figures()
    took = rig.honest_run()
    _report("4 connections x 64 unread listings of 30,000 entries", before, during)
    assert during[0] - before[0] < 96 * MiB, during
    # budget: 4 listings read at once per connection, each its top and 2 per level read
    assert during[1] - before[1] <= 4 * (1 + 4 * 3), during
    assert took < 10
    for client in clients:
        client.close()


# --- item 6: unread replies, unclosed streams ---------------------------------------------------

def test_unread_pongs_and_unclosed_refusals(rig: Rig) -> None:
    before = rig.figures()
    pinger = _raw(rig, rig.getter)
    pinger.sock.settimeout(0.5)
    ping = msg_frame({"t": "ping", "token": 1})
    sent = 0
    with contextlib.suppress(OSError, TimeoutError):
        while sent < 64 * MiB:  # the server stops reading once its replies pile up
            pinger.sock.sendall(ping * 4096)
            sent += len(ping) * 4096
    refuser = _raw(rig, rig.getter)
    # exec is refused and the client never sends close: the exec that finds more than the cap
    # of ended streams unclosed is the last one sent (anything after it would reach a closed
    # socket, whose reset could swallow the server's last words)
    refused = Limits().max_streams_per_connection + 2
    refuser.sock.sendall(b"".join(msg_frame({"t": "exec", "argv": ["true"]}, stream=2 * n + 1)
                                  for n in range(refused)))
    time.sleep(1)
    during = rig.figures()
    took = rig.honest_run()
    _report(f"{sent / MiB:.1f} MiB of pings never read; {refused} refusals never closed",
            before, during)
    assert sent < 64 * MiB, "the server kept reading pings whose pongs nobody read"
    assert during[0] - before[0] < 48 * MiB, during
    assert took < 10
    assert b"never closed" in refuser.read_until_closed(limit=10)
    pinger.close()
    refuser.close()


# --- item 5: resume hashing off the loop --------------------------------------------------------

def test_resume_hashing_of_a_huge_sparse_file_freezes_nobody(rig: Rig) -> None:
    sparse = rig.jail / "sparse.bin"
    with sparse.open("wb") as fh:
        fh.truncate(40 * 1024**3)
    clients = []
    for _ in range(4):
        client = _raw(rig, rig.full)
        client.send(msg_frame({"t": "get", "path": "sparse.bin", "offset": 40 * 1024**3,
                               "prefix_hash": "blake3:" + "0" * 64}, stream=1))
        clients.append(client)
    time.sleep(1)
    took = [rig.honest_run(timeout=30) for _ in range(3)]
    for client in clients:  # still hashing: no get has answered (this proves the load is on)
        client.sock.settimeout(0.05)
        with pytest.raises((TimeoutError, ssl.SSLWantReadError)):
            client.sock.recv(1)
    rss, fds = rig.figures()
    print(f"\n[4 resume hashes of a 40 GiB sparse file] honest runs "
          f"{', '.join(f'{t:.2f}' for t in took)} s, RSS {rss / MiB:.1f} MiB, {fds} fds")
    assert max(took) < 5, took
    for client in clients:
        client.close()


# --- item 10: floods at the default descriptor limit --------------------------------------------

@pytest.mark.parametrize("hard", [None, SOFT_NOFILE], ids=["hard-higher", "hard-1024"])
def test_a_flood_of_silent_connections_does_not_starve_a_real_client(tmp_path: Path,
                                                                    hard: int | None) -> None:
    """At soft 1024 with a higher hard limit, the server raises its soft limit and the flood
    binds nothing; at hard 1024 too, its derived limits bind (and say so) and a real client
    still gets in."""
    rig = _serve(tmp_path, hard=hard)
    before = rig.figures()
    soft_now = rig.proc.rlimit(psutil.RLIMIT_NOFILE)[0]
    held: list[socket.socket] = []
    try:
        for n in range(1300):  # 300 stalled handshakes + 1,000 silent, from 14 addresses
            address = f"127.0.0.{2 + n % 14}"
            sock = socket.socket()
            held.append(sock)
            sock.bind((address, 0))
            sock.connect(("127.0.0.1", rig.server.port))
            if n < 300:
                sock.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a hello begun
        deadline = time.monotonic() + 15  # the server accepts them all (a loaded machine lags)
        while (rig.figures()[1] < before[1] + 1000 if hard is None else
               "waiting handshake was dropped" not in rig.server.log_text()) and (
                time.monotonic() < deadline):
            time.sleep(0.2)
        during = rig.figures()
        took = rig.honest_run(timeout=30)
        _report(f"1,300 silent or stalled connections from 14 addresses, soft limit "
                f"{soft_now}", before, during)
        assert took < 10
        log = rig.server.log_text()
        assert "limits: " in log and "max-connections" in log
        if hard is None:
            assert soft_now == rig.proc.rlimit(psutil.RLIMIT_NOFILE)[1] > SOFT_NOFILE
            assert f"raised from {SOFT_NOFILE} to the hard limit {soft_now}" in log
            assert during[1] > before[1] + 1000  # all held at once, beyond the old soft limit
        else:
            assert soft_now == SOFT_NOFILE
            assert during[1] < SOFT_NOFILE, during
            assert "the oldest waiting handshake was dropped" in log or "server full" in log
    finally:
        for sock in held:
            sock.close()
        rig.server.stop()


# --- items 3, 4 and 10: many connections of one identity against the descriptor budget ---------

def test_one_identity_with_many_connections_cannot_take_every_descriptor(tmp_path: Path) -> None:
    """A put-only identity opens 12 connections of 16 stalled batches each (6 descriptors
    apiece) and a get-only one 3 connections of 4 listings stalled at the bottom of a 40-level
    tree (83 apiece): without a budget across connections that is 2,000 descriptors at a
    limit of 1024. Each identity gets its share, the rest are refused ``busy``, the server stays
    under its limit and an honest client is served."""
    rig = _serve(tmp_path, "--stall-timeout", "30", hard=SOFT_NOFILE)
    try:
        for i in range(BATCH_FILES):
            (rig.jail / f"d{i:03}").mkdir()
        deep = rig.jail.joinpath(*["deep"] * 40)
        deep.mkdir(parents=True)
        for i in range(30_000):
            (deep / f"entry-with-a-longish-name-{i:06}").touch()
        match = re.search(r"(\d+) descriptors for operations, (\d+) per client",
                          rig.server.log_text())
        assert match, rig.server.log_text()
        total, share = int(match[1]), int(match[2])
        before = rig.figures()
        putters = _stalled_batches(rig, connections=12, per_connection=16)
        listers = []
        for _ in range(3):
            client = _raw(rig, rig.getter)
            for n in range(4):
                client.send(msg_frame({"t": "list", "path": "deep", "batched": True},
                                      stream=2 * n + 1))
            listers.append(client)
        time.sleep(3)
        during = rig.figures()
        took = rig.honest_run()
        _report(f"12 connections x 16 stalled batches, 3 x 4 deep listings (budget {total}, "
                f"{share} per client)", before, during)
        assert during[1] < SOFT_NOFILE - 64, during
        # held: the share of each of the two identities, and a socket per connection
        assert during[1] - before[1] <= 2 * share + 15 + 4, during
        assert during[0] - before[0] < 96 * MiB, during
        assert took < 10
        refused = [_errors(client) for client in putters]
        assert any("cannot open more files for this client" in text
                   for texts in refused for text in texts), refused
        assert "descriptor limit binds for " in rig.server.log_text()
        for client in putters + listers:
            client.close()
    finally:
        rig.server.stop()


def _errors(client: RawClient) -> list[str]:
    """The messages of the stream errors the server has sent this client so far."""
    client.sock.settimeout(1.0)
    return [frame.header.get("message", "") for frame in client.frames(64)
            if frame.header and frame.header.get("t") == "error"]


# --- item 4: unread fetches over many connections of one identity -------------------------------

def test_unread_fetches_over_many_connections_of_one_identity(rig: Rig) -> None:
    """Each fetch reads up to 4 MiB of files whole and joins them to send: 12 connections x 4
    unread fetches held about 400 MiB before fetches were shared per identity (8 at once)."""
    small = rig.jail / "small"
    small.mkdir()
    payload = os.urandom(BATCH_FILE_SIZE)
    names = [f"f{i:03}" for i in range(BATCH_FILES)]  # 512 x 8,000 bytes: just under 4 MiB
    for name in names:
        (small / name).write_bytes(payload)
    before = rig.figures()
    clients = []
    for _ in range(12):
        client = _raw(rig, rig.getter)
        for n in range(4):
            client.send(msg_frame({"t": "fetch", "path": "small", "names": names},
                                  stream=2 * n + 1))
        clients.append(client)
    time.sleep(4)
    during = rig.figures()
    took = rig.honest_run()
    _report("12 connections x 4 unread fetches of 4 MiB", before, during)
    assert during[0] - before[0] < 128 * MiB, during
    assert took < 10
    for client in clients:
        client.close()


# --- item 4: bytes held per identity across its connections (exec stdin never read) ------------

def _send_until_blocked(client: RawClient, frames: list[bytes], patience: float) -> int:
    """Send ``frames`` until the server stops reading (a send blocks ``patience`` seconds);
    the bytes sent."""
    client.sock.settimeout(patience)
    sent = 0
    try:
        for frame in frames:
            client.sock.sendall(frame)
            sent += len(frame)
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    return sent


def test_unread_stdin_over_many_connections_of_one_identity(rig: Rig) -> None:
    """6 connections x 16 commands that never read stdin, each sent its whole 4 MiB window:
    384 MiB queued in the server without a budget across connections. With it, the identity's
    connections stop reading at --max-buffered-per-client (64 MiB) and say so in the log."""
    before = rig.figures()
    clients, sent = [], 0
    chunk = os.urandom(MiB)
    for _ in range(6):
        client = _raw(rig, rig.full)
        opens = [msg_frame({"t": "exec", "argv": ["sleep", "60"]}, stream=2 * n + 1)
                 for n in range(16)]
        client.send(b"".join(opens))
        time.sleep(0.3)  # the commands start: stdin is queued for them, not dropped
        sent += _send_until_blocked(
            client, [_data(2 * n + 1, chunk) for n in range(16) for _ in range(4)], 1.5)
        clients.append(client)
    time.sleep(1)
    during = rig.figures()
    took = rig.honest_run()
    _report(f"6 connections x 16 commands never reading stdin, {sent / MiB:.0f} MiB sent",
            before, during)
    assert "byte budget binds for " in rig.server.log_text()
    assert sent < 6 * 64 * MiB, "the server kept reading stdin nobody read"
    assert during[0] - before[0] < 112 * MiB, during
    # budget: a socket per connection, 4 descriptors per command
    assert during[1] - before[1] <= 6 * (1 + 16 * 4), during
    assert took < 10
    for client in clients:
        client.close()


# --- item 5: a batch's small files are stored (written, fsynced) off the loop -------------------

TINY_FILES = 512


def test_batches_of_tiny_files_freeze_nobody(rig: Rig, tmp_path: Path) -> None:
    """Each of 4 x 16 batches brings 512 files of 16 bytes in one DATA frame: stored on the
    loop (an fsync each, ~2 ms on ext4) that froze the server about a second per batch. On the
    disk pool, with 2 of its 4 threads per identity, an honest client's commands and its own
    put -r are served meanwhile."""
    import blake3

    content = b"0123456789abcdef"
    names = [f"f{i:03}" for i in range(TINY_FILES)]
    header = {"t": "batch", "names": names, "sizes": [len(content)] * TINY_FILES,
              "modes": [0o644] * TINY_FILES, "mtimes": [0] * TINY_FILES,
              "hashes": ["blake3:" + blake3.blake3(content).hexdigest()] * TINY_FILES}
    before = rig.figures()
    clients = []
    for c in range(4):
        client = _raw(rig, rig.putter)
        for n in range(16):
            (rig.jail / f"c{c}b{n}").mkdir()
            client.send(msg_frame({**header, "path": f"c{c}b{n}"}, stream=2 * n + 1)
                        + _data(2 * n + 1, content * TINY_FILES))
        clients.append(client)
    time.sleep(1)
    took = [rig.honest_run(timeout=30) for _ in range(3)]
    tree = tmp_path / "tree"
    for i in range(20):
        (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(100 + i))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    started = time.monotonic()
    put = subprocess.run([*TETHER, "put", "-r", "-p", str(rig.server.port), "--accept-new",
                          str(tree), "127.0.0.1:honest-tree"],
                         env={**env, "TETHER_HOME": str(rig.honest_home)}, capture_output=True,
                         timeout=60, check=False)
    put_took = time.monotonic() - started
    during = rig.figures()
    stored = sum(len(os.listdir(rig.jail / f"c{c}b{n}")) for c in range(4) for n in range(16))
    print(f"\n[4 connections x 16 batches of 512 tiny files] honest runs "
          f"{', '.join(f'{t:.2f}' for t in took)} s, put -r of 20 files {put_took:.2f} s, "
          f"{stored} of {64 * TINY_FILES} attacking files stored by then")
    _report("batches of tiny files", before, during)
    assert put.returncode == 0, put.stderr
    assert stored < 64 * TINY_FILES, "the attack was over before the honest client came"
    assert max(took) < 5, took
    assert put_took < 15
    assert during[1] - before[1] <= 4 * (16 * 6 + 1), during
    assert during[0] - before[0] < 64 * MiB, during
    for client in clients:
        client.close()
