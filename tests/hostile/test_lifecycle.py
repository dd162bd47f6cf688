"""Signals and state: a server stopped with live sessions, messages only a server may send, a fork
bomb, a peer that vanishes without a FIN, and output that is neither text nor UTF-8.

Remote processes carry a marker in their command line (helpers.family), so psutil can show that
none outlives what should have killed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import types
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

import tether
from tether.errors import ServerShuttingDown
from tether.protocol.messages import REGISTRY, Message, Role
from tether.server.limits import Limits

from .conftest import Setup, make_setup
from .helpers import LoopThread, ServeProcess, family, marked, new_mark, survivors, wait_until
from .proxy import BlackHoleProxy, Faults, Proxy
from .rawclient import RawClient, msg_frame

# --- SIGTERM with live sessions -----------------------------------------------------------------


async def _eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_sigterm_with_live_sessions(tmp_path: Path) -> None:
    """A running command (one family ignoring SIGTERM) and a put in progress: both clients get
    "server shutting down", every process group is gone, the partial is kept and resumes, the
    server exits 0."""
    serve, client_home, mark = ServeProcess(tmp_path), tmp_path / "client", new_mark()
    serve.authorize(client_home)
    await asyncio.to_thread(serve.start)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 * 1024 * 1024))
    partial = serve.root / ".big.bin.tether-part"
    conns: list[tether.Connection] = []
    try:
        runner = await tether.connect("127.0.0.1", serve.port, home=client_home,
                                      accept_new=True)
        conns.append(runner)
        plain = await runner.start(family(mark))
        stubborn = await runner.start(family(mark, stubborn=True))
        await _eventually(lambda: len(marked(mark)) >= 4)
        async with Proxy(("127.0.0.1", serve.port), Faults(rate=4_000_000), Faults()) as proxy:
            putter = await tether.connect("127.0.0.1", proxy.port, home=client_home,
                                          accept_new=True)
            conns.append(putter)
            put = asyncio.create_task(putter.put(src, "big.bin"))
            await _eventually(lambda: partial.exists() and partial.stat().st_size > 0)
            assert serve.proc is not None
            serve.proc.send_signal(signal.SIGTERM)
            for proc in (plain, stubborn):
                with pytest.raises(ServerShuttingDown, match="server shutting down"):
                    await asyncio.wait_for(proc.wait(), 15)
            with pytest.raises(ServerShuttingDown, match="server shutting down"):
                await asyncio.wait_for(put, 15)
        status = await asyncio.to_thread(serve.proc.wait, 15)
    finally:
        for conn in conns:
            await conn.close()
        serve.stop()
    assert status == 0
    assert "tether serve: stopped" in serve.log.read_text()
    assert survivors(mark) == []
    kept = partial.stat().st_size
    assert 0 < kept < src.stat().st_size and not (serve.root / "big.bin").exists()

    await asyncio.to_thread(serve.start)  # the same home and root: the partial resumes
    try:
        async with tether.connect("127.0.0.1", serve.port, home=client_home,
                                  accept_new=True) as conn:
            result = await conn.put(src, "big.bin")
    finally:
        serve.stop()
    assert result.files[0].resumed_from > 0
    assert (serve.root / "big.bin").read_bytes() == src.read_bytes()
    assert not partial.exists()


# --- messages only a server may send ------------------------------------------------------------

SERVER_ONLY = sorted(name for name, cls in REGISTRY.items() if Role.CLIENT not in cls.SENDERS)


def _sample(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return _sample(typing.get_args(hint)[0])
    if origin is list:
        return [_sample(typing.get_args(hint)[0])]
    return {int: 1, str: "x", bool: False, float: 0.5}[hint]


def _header(cls: type[Message]) -> dict[str, Any]:
    """A well-formed header of ``cls``: every field that has no default, with a sample value."""
    header: dict[str, Any] = {"t": cls.TYPE}
    for f in cls.FIELDS:
        if f.name != "stream" and f.required:
            header[f.name] = _sample(f.type)
    return header


def test_the_server_only_list_is_complete() -> None:
    assert SERVER_ONLY == ["connected", "done", "entries", "entry", "exit", "files",
                           "incoming", "listening", "meta", "ready", "started", "status",
                           "sync_deleted", "welcome"]


@pytest.mark.parametrize("kind", SERVER_ONLY)
async def test_a_message_only_a_server_may_send(setup: Setup, kind: str) -> None:
    """Sent by a client after the handshake, on the stream of its running command: a protocol
    error naming the rule, the connection closed (its command killed), the next client served."""
    cls, mark = REGISTRY[kind], new_mark()

    def attack() -> dict[str, Any] | None:
        client = RawClient.connect(setup.port, setup.client_id)
        try:
            client.handshake()
            client.send(msg_frame({"t": "exec", "argv": family(mark)}, stream=1))
            assert wait_until(lambda: len(marked(mark)) >= 2, 10)
            client.send(msg_frame(_header(cls), stream=0 if cls.CONNECTION else 1))
            error = client.error()
            assert client.read_until_closed(5) == b""  # and then the server closes
            return error
        finally:
            client.close()

    error = await asyncio.to_thread(attack)
    assert error is not None and error["code"] == "protocol", error
    assert f"a client may not send {kind!r}" in error["message"]
    assert await asyncio.to_thread(survivors, mark) == []
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        assert (await conn.run(["echo", "next"])).stdout == b"next\n"


BEFORE_HELLO = sorted(name for name, cls in REGISTRY.items()
                      if Role.CLIENT in cls.SENDERS and name != "hello")


@pytest.mark.parametrize("kind", BEFORE_HELLO)
async def test_nothing_a_client_sends_before_hello_is_served(setup: Setup, kind: str) -> None:
    """Authenticated by TLS but before hello: every message a client may send is a protocol
    error, and an exec or put would-be effect never happens."""
    cls, marker = REGISTRY[kind], setup.root / "ran"
    header = _header(cls) | {
        "exec": {"argv": ["touch", str(marker)]}, "shell": {"argv": ["touch", str(marker)]},
        "put": {"path": "ran", "size": 0}, "get": {"path": "ran"}, "list": {"path": "."},
    }.get(kind, {})

    def attempt() -> dict[str, Any] | None:
        client = RawClient.connect(setup.port, setup.client_id)
        try:
            client.send(msg_frame(header, stream=0 if cls.CONNECTION else 1))
            return client.error()
        finally:
            client.close()

    error = await asyncio.to_thread(attempt)
    assert error is not None and error["code"] == "protocol", error
    await asyncio.sleep(0.2)
    assert not marker.exists() and not list(setup.root.iterdir())
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        assert (await conn.run(["echo", "next"])).stdout == b"next\n"


# --- a fork bomb under --process-nproc ----------------------------------------------------------

NPROC = 40  # per-user processes (threads count too) for commands: the server's own and the bomb's
BOMB = "f(){ f & f; }; f"  # each call forks itself in the background and recurses

# `setpriv` starts the real `tether serve` as nobody. When the interpreter lives where nobody
# cannot reach it (a pyenv under /root, as on this machine), the server gets a mount namespace in
# which that one closed directory is replaced by an open one holding only the way to Python.
NAMESPACE = ('mount --make-rprivate / && mount --bind "$1/$2" "$3/$2" && mount --rbind "$3" "$1" '
             '&& shift 3 && exec "$@"')


def _closed_ancestor(path: Path) -> Path | None:
    """The first directory above ``path`` that others may not search, if any."""
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def _as_nobody(argv: list[str], user: Unprivileged) -> list[str]:
    """``argv`` run as ``user``: directly, or inside the namespace described above."""
    drop = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv]
    python = Path(os.path.realpath(sys.executable))
    closed = _closed_ancestor(python)
    if closed is None:
        return drop
    child = python.relative_to(closed).parts[0]
    fake = user.base / "fake-root"
    (fake / child).mkdir(parents=True)
    os.chmod(fake, 0o755)
    return ["unshare", "-m", "sh", "-c", NAMESPACE, "sh", str(closed), child, str(fake), *drop]


@dataclass
class Unprivileged:
    uid: int
    gid: int
    base: Path
    pids: list[int] = field(default_factory=list)

    def user_processes(self, zombies: bool = False) -> list[psutil.Process]:
        """Every process of this user (the server and whatever its commands started); zombies
        too if asked, as RLIMIT_NPROC counts them until they are reaped."""
        out = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.uids().real == self.uid and (
                        zombies or proc.status() != psutil.STATUS_ZOMBIE):
                    out.append(proc)
        return out


@pytest.fixture
def nobody() -> Unprivileged:
    if os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC only binds a non-root server, and only root can start one "
                    "as another user here")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run the server as")
    base = Path(tempfile.mkdtemp(prefix="tether-nproc-"))
    os.chown(base, user.pw_uid, user.pw_gid)
    who = Unprivileged(user.pw_uid, user.pw_gid, base)
    try:
        # an earlier bomb's orphans may wait for init to reap them; anything else is not ours
        if not wait_until(lambda: not who.user_processes(zombies=True), 5):
            pytest.skip("processes already run as nobody: RLIMIT_NPROC would count them too")
        yield who  # type: ignore[misc]
        wait_until(lambda: not who.user_processes(zombies=True), 5)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirs, files in os.walk(path):
        os.chown(dirpath, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


async def test_a_fork_bomb_is_contained_by_process_nproc(nobody: Unprivileged,
                                                         tmp_path: Path) -> None:
    client_home = tmp_path / "client"
    serve = ServeProcess(nobody.base)
    serve.authorize(client_home)
    serve.root.mkdir()
    _chown_tree(nobody.base, nobody.uid, nobody.gid)
    serve.argv = _as_nobody([sys.executable, "-m", "tether", "serve", "-p", "0", "--root",
                             str(serve.root), "--kill-grace", "0.5", "--drain", "0",
                             "--process-nproc",
                             str(NPROC)], nobody)
    try:
        await asyncio.to_thread(serve.start)
    except AssertionError as exc:
        pytest.skip(f"cannot start the server as nobody here: {exc}")
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(nobody.user_processes()))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        assert serve.proc is not None
        assert psutil.Process(serve.proc.pid).uids().real == nobody.uid
        async with tether.connect("127.0.0.1", serve.port, home=client_home,
                                  accept_new=True) as conn:
            sampler.start()
            bomb = await asyncio.wait_for(conn.run(["sh", "-c", BOMB], timeout=20), 60)
            await asyncio.to_thread(
                wait_until, lambda: len(nobody.user_processes()) == 1, 5)
            stop.set()
            left = [p.pid for p in nobody.user_processes() if p.pid != serve.proc.pid]
            after = await conn.run(["echo", "still serving"])
        assert serve.proc.poll() is None, serve.log.read_text()
    finally:
        stop.set()
        serve.stop()
    assert not bomb.ok and b"fork" in bomb.stderr.lower(), bomb
    assert peak[0] <= NPROC, f"{peak[0]} processes of nobody at the peak"
    assert left == [], f"the bomb's processes outlived it: {left}"
    assert after.stdout == b"still serving\n"
    print(f"fork bomb: status {bomb.status} after {bomb.duration:.2f} s, "
          f"{bomb.stderr.lower().count(b'fork')} refused forks reported, at most {peak[0]} "
          f"processes of the server's user seen (limit {NPROC})")


# --- a peer that vanishes without a FIN ---------------------------------------------------------


@contextlib.asynccontextmanager
async def _idle_setup(tmp_path: Path, idle: float) -> AsyncIterator[Setup]:
    s = await make_setup(tmp_path, Limits(idle_timeout=idle))
    try:
        yield s
    finally:
        await s.server.close()


async def test_a_vanished_peer_is_dropped_by_the_idle_timeout(tmp_path: Path) -> None:
    idle = 1.0
    async with _idle_setup(tmp_path, idle) as s, \
            BlackHoleProxy(("127.0.0.1", s.port)) as proxy:
        conn = await tether.connect("127.0.0.1", proxy.port, home=s.client_home,
                                    accept_new=True)
        try:
            assert (await conn.run(["echo", "here"])).stdout == b"here\n"
            assert s.server.admission.connections == 1 and len(s.server.sessions) == 1
            (session,) = s.server.sessions
            # the client's close of that command's stream is on its way; a stream still open
            # would leave the vanished peer to TCP keepalive (about two minutes), see below
            await _eventually(lambda: session.conn.proto.open_streams == 0, 5)
            proxy.vanish()
            start = time.monotonic()
            await _eventually(lambda: s.server.admission.connections == 0, 10)
            took = time.monotonic() - start
            assert not s.server.sessions and not s.server.admission.clients
            assert idle * 0.8 <= took <= idle + 2.0, took
            # nothing reached the client: from its side the connection still looks open
            assert not conn._reader.done()
        finally:
            await proxy.close()  # first, so the client's close is not kept waiting too
            await conn.close()
        async with tether.connect("127.0.0.1", s.port, home=s.client_home,
                                  accept_new=True) as other:
            assert (await other.run(["echo", "next"])).stdout == b"next\n"


async def test_keepalive_is_on_for_every_connection(setup: Setup) -> None:
    """A peer that vanishes while a stream is open is not idle: TCP keepalive finds it, after
    about 60 + 6 x 10 s of silence (too long to wait for here; the settings are checked)."""
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        await conn.run(["true"])
        (session,) = setup.server.sessions
        sock = session.conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 6


# --- output that is not text --------------------------------------------------------------------

INVALID_UTF8 = [
    b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
    b"\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"caf\xe9", b"\x00\x1b[31m\x07\r",
]


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """Every byte value, invalid UTF-8 of each kind (also cut across frame boundaries by its
    size), and random bytes: about 2.3 MiB."""
    rnd = os.urandom(2 * 1024 * 1024 + 333)
    data = bytes(range(256)) * 64 + b"".join(INVALID_UTF8) * 100 + rnd + b"\xe2\x82"
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path


async def test_binary_and_invalid_utf8_output_is_byte_identical(setup: Setup,
                                                                payload: Path) -> None:
    data = payload.read_bytes()
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        both = await conn.run(["sh", "-c", 'cat "$1"; cat "$1" >&2', "sh", str(payload)])
        echoed = await conn.run(["cat"], input=data)
        chunks: list[bytes] = []
        async with conn.stream(["cat", str(payload)]) as proc:
            async for channel, chunk in proc:
                assert channel == 1
                chunks.append(chunk)
            assert (await proc.wait()).status == 0
    assert both.stdout == data and both.stderr == data and both.status == 0
    assert echoed.stdout == data
    assert b"".join(chunks) == data and len(chunks) > 1
    assert "\ufffd" in both.text and "\ufffd" in both.error_text  # decoding never raises


def test_binary_output_through_the_sync_facade(setup_thread: tuple[Setup, LoopThread],
                                               payload: Path) -> None:
    s, _ = setup_thread
    with tether.SyncConnection("127.0.0.1", s.port, home=s.client_home,
                               accept_new=True) as conn:
        result = conn.run(["cat", str(payload)])
    assert result.stdout == payload.read_bytes()


@pytest.fixture
def setup_thread(tmp_path: Path) -> Any:
    """An in-process server on a loop thread of its own, for blocking (sync) clients."""
    loop = LoopThread("server")
    s = loop.run(make_setup(tmp_path))
    yield s, loop
    loop.run(s.server.close())
    loop.close()

