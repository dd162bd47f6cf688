"""A hypothesis state machine over a real server and real clients (TLS on loopback): random
sequences of connecting (authorized or not), running commands, putting and getting files,
abandoning commands and transfers half-way, and bad frames.

Invariants, checked after every step:

* an unauthenticated peer never ran or wrote anything: the marker file each of its commands
  would create never exists, and the server's root holds only what authorized clients put there
  (final files and ``.NAME.tether-part`` partials);
* every completed transfer is byte-identical, and a file never holds anything but a whole
  version that some put sent (never a partial under the final name);
* the server keeps serving: a fresh connection runs a command;
* no process started by a command survives its stream or its session (psutil, by a marker in
  the command line), and when every client has gone the server's admission counts are zero.

The server runs in this process, on an event loop thread of its own; the clients share another.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import tether
from tether.errors import AlreadyExists, NotAuthorized, TetherError
from tether.identity import Identity, generate_identity
from tether.server.limits import Limits

from .conftest import Setup, make_setup
from .helpers import LoopThread, family, marked, new_mark, survivors, wait_until
from .rawclient import RawClient, msg_frame
from .test_bad_input import BAD_FRAMES

SIZES = [0, 1, 4095, 65536, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 17]
NAMES = ["a.bin", "b.bin", "c d.bin"]
MAX_CONNECTIONS = 3
TIMEOUT = 20.0


@dataclass
class Rig:
    """One server for all examples, a client loop, and the identity nobody authorized."""

    tmp: Path
    server_loop: LoopThread
    client_loop: LoopThread
    setup: Setup
    stranger: Identity
    stranger_home: Path
    examples: itertools.count[int] = field(default_factory=itertools.count)
    tally: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, tmp: Path) -> Rig:
        server_loop = LoopThread("stateful-server")
        # every peer here comes from 127.0.0.1: lift the per-address throttle of failed
        # handshakes (test_availability.py tests it), so strangers keep reaching the TLS layer
        setup = server_loop.run(make_setup(tmp, Limits(max_failures_per_address=1_000_000)))
        stranger_home = tmp / "stranger"
        stranger = generate_identity(stranger_home, "stranger")
        return cls(tmp, server_loop, LoopThread("stateful-clients"), setup, stranger,
                   stranger_home)

    def close(self) -> None:
        self.client_loop.close()
        self.server_loop.run(self.setup.server.close())
        self.server_loop.close()

    def count(self, what: str, n: int = 1) -> None:
        self.tally[what] = self.tally.get(what, 0) + n

    def connect(self, home: Path | None = None, port: int | None = None) -> tether.Connection:
        return self.client_loop.run(asyncio.wait_for(tether.connect(
            "127.0.0.1", port or self.setup.port, home=home or self.setup.client_home,
            accept_new=True), TIMEOUT))

    def run(self, coro: Any) -> Any:
        return self.client_loop.run(asyncio.wait_for(coro, TIMEOUT), TIMEOUT + 5)


class TetherSessions(RuleBasedStateMachine):
    rig: ClassVar[Rig]

    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        rig = self.rig
        self.n = next(rig.examples)
        self.dir = f"ex{self.n}"
        self.remote = rig.setup.root / self.dir
        self.remote.mkdir()
        self.local = rig.tmp / f"local{self.n}"
        self.local.mkdir()
        self.open: list[tether.Connection] = []
        # name -> every content the remote file may hold now: one after a completed put, the
        # old and the new one after a put that was cut off (its commit may or may not have won)
        self.files: dict[str, set[bytes | None]] = {}
        self.marks: list[str] = []
        self.forbidden: list[Path] = []  # what unauthenticated peers tried to create
        self.cut: dict[str, Path] = {}  # the source of a put that was cut off, by name
        self.seq = itertools.count()

    # --- connections -----------------------------------------------------------------------

    @initialize(target=conns)
    def first_connection(self) -> tether.Connection:
        return self.connect()

    @precondition(lambda self: len(self.open) < MAX_CONNECTIONS)
    @rule(target=conns)
    def connect(self) -> tether.Connection:
        conn = self.rig.connect()
        self.open.append(conn)
        self.rig.count("connections")
        return conn

    @rule(authenticated=st.booleans(),
          how=st.sampled_from(["api", "stranger-tls", "no-certificate", "plain-tcp"]),
          frame=st.one_of(st.sampled_from(sorted(BAD_FRAMES)), st.binary(min_size=1,
                                                                           max_size=64)))
    def hostile_peer(self, authenticated: bool, how: str, frame: str | bytes) -> None:
        """An unauthenticated peer, or an authenticated one sending a bad frame (or garbage)
        after its hello."""
        if authenticated:
            self.bad_frame(frame)
        else:
            self.unauthenticated_peer(how)

    def unauthenticated_peer(self, how: str) -> None:
        """A peer without an authorized identity tries to run a command and store a file."""
        marker = self.remote / f"pwned-{next(self.seq)}"
        self.forbidden.append(marker)
        self.rig.count("unauthenticated attempts")
        if how == "api":
            with pytest.raises(NotAuthorized):
                self.rig.connect(home=self.rig.stranger_home)
            return
        frames = (msg_frame({"t": "hello", "versions": [1]})
                  + msg_frame({"t": "exec", "argv": ["touch", str(marker)]}, stream=1)
                  + msg_frame({"t": "put", "path": f"{self.dir}/{marker.name}.put",
                               "size": 3}, stream=3)
                  + b"\x54\xe7\x02\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x03abc")
        self.forbidden.append(self.remote / f"{marker.name}.put")
        answer = _unauthenticated(self.rig.setup.port, how, self.rig.stranger, frames)
        assert b'"welcome"' not in answer and b'"started"' not in answer

    @rule(conn=consumes(conns))
    def close(self, conn: tether.Connection) -> None:
        self.open.remove(conn)
        self.rig.run(conn.close())
        self._settle()

    # --- commands --------------------------------------------------------------------------

    @rule(conn=conns, data=st.binary(max_size=2048))
    def run(self, conn: tether.Connection, data: bytes) -> None:
        mark = self._mark()
        result = self.rig.run(conn.run(["sh", "-c", f"cat; : {mark}"], input=data))
        assert result.status == 0 and result.stdout == data, result
        self.rig.count("commands")

    @rule(conn=conns, how=st.sampled_from(["abandon", "timeout"]))
    def cancel_command(self, conn: tether.Connection, how: str) -> None:
        """Walk away from a long command (a leader and a child, forever), or let it time out;
        the connection goes on."""
        mark = self._mark()
        if how == "timeout":
            result = self.rig.run(conn.run(family(mark), timeout=0.3))
            assert result.timed_out
        else:
            proc = self._started(conn, mark)
            proc.abandon()
        assert survivors(mark) == [], f"after {how}"
        assert self.rig.run(conn.run(["echo", "on"])).stdout == b"on\n"
        self.rig.count("commands cancelled")

    @rule(conn=consumes(conns))
    def close_during_a_command(self, conn: tether.Connection) -> None:
        mark = self._mark()
        self._started(conn, mark)
        self.open.remove(conn)
        self.rig.run(conn.close())
        assert survivors(mark) == []
        self._settle()
        self.rig.count("commands cancelled")

    def _started(self, conn: tether.Connection, mark: str) -> tether.Process:
        proc = self.rig.run(conn.start(family(mark)))
        assert wait_until(lambda: len(marked(mark)) >= 2, 10), "the command did not start"
        return proc

    # --- transfers -------------------------------------------------------------------------

    @rule(conn=conns, name=st.sampled_from(NAMES), size=st.sampled_from(SIZES),
          seed=st.integers(0, 2**16), force=st.booleans())
    def put(self, conn: tether.Connection, name: str, size: int, seed: int,
            force: bool) -> None:
        data = random.Random(seed).randbytes(size)
        src = self._local_file(data)
        exists = (self.remote / name).exists()
        try:
            result = self.rig.run(conn.put(src, f"{self.dir}/{name}", force=force))
        except AlreadyExists:
            assert exists and not force
            return
        assert not exists or force
        assert result.files[0].size == size
        assert not (self.remote / f".{name}.tether-part").exists()
        self.files[name] = {data}
        self.cut.pop(name, None)
        self.rig.count("puts")
        self.rig.count("bytes put", size)

    @rule(conn=consumes(conns), name=st.sampled_from(NAMES), seed=st.integers(0, 2**16),
          delay=st.sampled_from([0.0, 0.003, 0.006, 0.01, 0.03]))
    def cut_put(self, conn: tether.Connection, name: str, seed: int, delay: float) -> None:
        """A put of 6 MiB whose connection is closed after ``delay``: the remote file is the
        old version or the new one, never a mix; a later put resumes or restarts."""
        data = random.Random(seed).randbytes(6 * 1024 * 1024)
        src = self._local_file(data)
        before = self.files.get(name, {None})

        async def put_then_cut() -> bool:
            task = asyncio.create_task(conn.put(src, f"{self.dir}/{name}", force=True))
            await asyncio.sleep(delay)
            await conn.close()
            try:
                await task
            except (TetherError, asyncio.CancelledError):
                return True
            return False

        self.open.remove(conn)
        cut = self.rig.run(put_then_cut())
        self.files[name] = before | {data}
        self._settle()  # its session has ended: no commit can land later
        self.cut[name] = src
        self.rig.count("puts cut off" if cut else "puts done before the cut")

    @precondition(lambda self: self.cut)
    @rule(conn=conns, data=st.data())
    def put_again_after_a_cut(self, conn: tether.Connection, data: st.DataObject) -> None:
        """The same source again: it resumes from the partial (or finds the file done)."""
        name = data.draw(st.sampled_from(sorted(self.cut)), label="name")
        src = self.cut.pop(name)
        result = self.rig.run(conn.put(src, f"{self.dir}/{name}", force=True))
        assert (self.remote / name).read_bytes() == src.read_bytes()
        assert not (self.remote / f".{name}.tether-part").exists()
        self.files[name] = {src.read_bytes()}
        resumed = result.files[0].resumed_from
        self.rig.count("puts resumed" if resumed else "puts redone")
        self.rig.count("bytes put", result.files[0].size - resumed)

    @precondition(lambda self: self.files)
    @rule(conn=conns, data=st.data())
    def get(self, conn: tether.Connection, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)), label="name")
        dest = self.local / f"got-{next(self.seq)}"
        if None in self.files[name] and not (self.remote / name).exists():
            return  # a cut-off first put that never committed
        self.rig.run(conn.get(f"{self.dir}/{name}", dest))
        got = dest.read_bytes()
        assert got in self.files[name], f"{name}: {len(got)} bytes, not a version that was put"
        self.files[name] = {got}
        self.rig.count("gets")
        self.rig.count("bytes got", len(got))

    # --- bad frames ------------------------------------------------------------------------

    def bad_frame(self, frame: str | bytes) -> None:
        """An authenticated raw client sends one bad frame (or garbage) after its hello."""
        raw = BAD_FRAMES[frame] if isinstance(frame, str) else frame
        client = RawClient.connect(self.rig.setup.port, self.rig.setup.client_id, timeout=10)
        try:
            client.handshake()
            client.send(raw)
            client.sock.settimeout(0.5)
            client.frames(2)  # an error frame, or the server waits for more: either is fine
        finally:
            client.close()
        self.rig.count("bad frames")

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def nothing_from_the_unauthenticated(self) -> None:
        for path in self.forbidden:
            assert not path.exists(), f"an unauthenticated peer created {path}"

    @invariant()
    def the_root_holds_only_what_was_put(self) -> None:
        for entry in self.remote.iterdir():
            name = entry.name
            if name.startswith(".") and name.endswith(".tether-part"):
                assert name[1:-len(".tether-part")] in self.files, name
                continue
            assert name in self.files, f"unexpected {name} in the server's root"
            assert entry.read_bytes() in self.files[name], f"{name} is not a version put"

    @invariant()
    def the_server_serves(self) -> None:
        conn = self.rig.connect()
        try:
            assert self.rig.run(conn.run(["echo", "ok"])).stdout == b"ok\n"
        finally:
            self.rig.run(conn.close())

    def teardown(self) -> None:
        for conn in self.open:
            self.rig.run(conn.close())
        left = [s for mark in self.marks for s in survivors(mark, within=3.0)]
        assert left == [], left
        admission = self.rig.setup.server.admission
        assert wait_until(lambda: admission.connections == 0, 10), admission
        assert not admission.clients and not admission.processes, admission

    # --- helpers ---------------------------------------------------------------------------

    def _settle(self) -> None:
        server = self.rig.setup.server
        assert wait_until(lambda: len(server.sessions) <= len(self.open), 10), "a session lingers"

    def _mark(self) -> str:
        mark = new_mark()
        self.marks.append(mark)
        return mark

    def _local_file(self, data: bytes) -> Path:
        path = self.local / f"src-{next(self.seq)}"
        path.write_bytes(data)
        return path


def _unauthenticated(port: int, how: str, stranger: Identity, frames: bytes) -> bytes:
    """Connect as ``how``, send ``frames`` at once, and return whatever comes back."""
    try:
        if how == "stranger-tls":
            client = RawClient.connect(port, stranger, timeout=10)
        elif how == "no-certificate":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            client = RawClient(ctx.wrap_socket(raw))
        else:
            client = RawClient.connect(port, None, timeout=10)
    except (OSError, ssl.SSLError):
        return b""  # refused inside the handshake
    try:
        client.send(frames)
        return client.read_until_closed(10)
    finally:
        client.close()


TetherSessions.TestCase.settings = settings(  # also for running the class as a unittest
    max_examples=14, stateful_step_count=20, deadline=None, database=None,
    suppress_health_check=list(HealthCheck))


def test_random_sessions(tmp_path: Path) -> None:
    rig = Rig.start(tmp_path)
    TetherSessions.rig = rig
    try:
        run_state_machine_as_test(TetherSessions, settings=TetherSessions.TestCase.settings)
    finally:
        rig.close()
    print("stateful:", ", ".join(f"{v} {k}" for k, v in rig.tally.items()))
    assert rig.tally.get("connections", 0) > 0


async def test_run_with_empty_input_ends(setup: Setup) -> None:
    """run(input=b"") opened the command's stdin and never closed it (found by the machine)."""
    async with tether.connect("127.0.0.1", setup.port, home=setup.client_home,
                              accept_new=True) as conn:
        result = await asyncio.wait_for(conn.run(["cat"], input=b""), 2)
    assert result.stdout == b"" and result.status == 0
