"""Bounded fuzzing of the two places a peer's bytes and strings meet the most code: the frame
decoder with the connection state machine, and a confined client's path resolver.

* Protocol: a valid conversation that uses every message type and every transition of every
  operation's table (generated from those tables: ``tests/conversations.py``) is encoded by a
  real client and server :class:`Connection`, then mutated (bit flips, overwritten lengths,
  inserted, deleted and duplicated bytes, dropped, duplicated and swapped frames, re-typed
  headers) and fed to a fresh connection of the receiving role in random pieces. Every step
  must give an event the rules allow for that role, NEED_DATA, CLOSED, or a
  RemoteProtocolError, after which the connection stays failed and may send exactly one
  stream-0 error. Any other exception is a bug.
* Paths: random path strings built from a small alphabet (``..``, ``.``, empty components, ``/``,
  the names of symlinks that lead out, FIFOs, a device, a socket, NUL, backslashes, unicode, a
  name too long for the file system) go through every FileArea entry point a put or get uses.
  Each call raises a RemoteError subclass or yields file descriptors whose real paths stay below
  the root; nothing outside the root changes.

Hypothesis runs a fixed number of examples; a plain random mutation loop then runs for
``TETHER_FUZZ_SECONDS`` (default 3) per target, so CI time is bounded and a longer local run is one
environment variable away. Each test prints what it tried (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations import conversation
from tether.errors import LocalProtocolError, RemoteError, RemoteProtocolError
from tether.protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Data,
    Error,
    Hello,
    Message,
    Ping,
    Refused,
    Role,
    Welcome,
)
from tether.protocol.frames import MAX_BODY, MAX_HEADER, PREFIX_SIZE
from tether.protocol.messages import REGISTRY
from tether.protocol.streams import OPERATIONS
from tether.storage.area import FileArea
from tether.storage.names import check_name
from tether.storage.source import SourceFile

FUZZ_SECONDS = float(os.environ.get("TETHER_FUZZ_SECONDS", "3"))
PROTOCOL = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
PATHS = settings(max_examples=1200, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))

# A chooser: (low, high) -> an integer in [low, high]; hypothesis' draw or random.randint.
Choose = Callable[[int, int], int]


# --- a valid conversation, made from the stream tables (tests/conversations.py) -------------


TALK = conversation()
INTERESTING = [0, 1, 2, 15, 16, 17, 255, 256, MAX_HEADER, MAX_HEADER + 1, MAX_BODY,
               MAX_BODY + 1, 2**31 - 1, 2**31, 2**32 - 1]
TYPES = sorted(REGISTRY)


def mutate(frames: list[bytes], choose: Choose) -> bytes:
    """A few frame-level and byte-level mutations of a valid stream."""
    frames = list(frames)
    for _ in range(choose(0, 2)):
        i, j = choose(0, len(frames) - 1), choose(0, len(frames) - 1)
        op = choose(0, 4)
        if op == 0 and len(frames) > 1:
            del frames[i]
        elif op == 1:
            frames.insert(j, frames[i])
        elif op == 2:
            frames[i], frames[j] = frames[j], frames[i]
        elif op == 3:  # re-type a message: its fields then mostly mean something else
            old = frames[i]
            hlen = struct.unpack_from(">I", old, 8)[0]
            header = old[PREFIX_SIZE:PREFIX_SIZE + hlen]
            if header.startswith(b'{"t":"'):
                end = header.index(b'"', 6)
                new = b'{"t":"' + TYPES[choose(0, len(TYPES) - 1)].encode() + header[end:]
                frames[i] = (old[:8] + struct.pack(">I", len(new)) + old[12:16] + new
                             + old[PREFIX_SIZE + hlen:])
        else:  # move a frame to another stream id
            old = frames[i]
            frames[i] = old[:4] + struct.pack(">I", choose(0, 17)) + old[8:]
    data = bytearray(b"".join(frames))
    for _ in range(choose(0, 3)):
        pos = choose(0, max(len(data) - 1, 0))
        op = choose(0, 6)
        if op == 0 and data:
            data[pos] ^= 1 << choose(0, 7)
        elif op == 1 and data:
            data[pos] = choose(0, 255)
        elif op == 2:
            data[pos:pos] = bytes(choose(0, 255) for _ in range(choose(1, 8)))
        elif op == 3:
            del data[pos:pos + choose(1, 32)]
        elif op == 4:
            data[pos:pos] = data[pos:pos + choose(1, 64)]
        elif op == 5 and len(data) >= pos + 4:
            data[pos:pos + 4] = struct.pack(">I", INTERESTING[choose(0, len(INTERESTING) - 1)])
        else:
            del data[pos:]
    return bytes(data)


def pieces(data: bytes, choose: Choose) -> Iterator[bytes]:
    """``data`` in random pieces: single bytes, small runs, or the rest at once."""
    pos = 0
    while pos < len(data):
        size = [1, choose(1, 40), choose(1, 4096), len(data)][choose(0, 3)]
        yield data[pos:pos + size]
        pos += size


@dataclass
class Tally:
    inputs: int = 0
    events: int = 0
    errors: int = 0

    def line(self, what: str) -> str:
        return (f"{what}: {self.inputs} inputs, {self.events} events, "
                f"{self.errors} protocol errors, 0 other exceptions")


def feed(role: Role, data: bytes, choose: Choose, tally: Tally) -> None:
    """Feed ``data`` to a fresh connection of ``role`` and check every step."""
    conn = Connection(role)
    peer = Role.SERVER if role is Role.CLIENT else Role.CLIENT
    if role is Role.CLIENT:
        conn.send(Hello(versions=[1]))
    tally.inputs += 1
    try:
        for piece in [*pieces(data, choose), b""]:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or event is CLOSED:
                    break
                tally.events += 1
                if not _check_event(conn, role, peer, event):
                    return
    except RemoteProtocolError:
        tally.errors += 1
        _check_failed(conn)


def _check_event(conn: Connection, role: Role, peer: Role, event: Message | Data) -> bool:
    """Check an event and react as the application would; False: the application closes."""
    if isinstance(event, Data):
        assert event.data and event.stream != 0
        assert event.channel == 0 or peer is Role.SERVER
        conn.consumed(event.stream, len(event.data))
        return True
    if isinstance(event, Refused):  # an opener over its caps: the session refuses it
        assert role is Role.SERVER and event.request.OPENS and event.reason
        conn.send(Error(code="bad_request", message=event.reason, stream=event.stream))
        return True
    assert isinstance(event, Message)
    assert peer in event.SENDERS, f"a {peer.value} may not send {event.TYPE}"
    if isinstance(event, Hello):  # the server's answer, as the session gives it
        if 1 not in event.versions:
            conn.send(Error(code="unsupported_version", message="no common version"))
            return False
        conn.send(Welcome(version=1))
    elif isinstance(event, Welcome):  # the client opens its streams, as the real one would
        for opener in TALK.openers:
            conn.send(opener)
    elif isinstance(event, Error) and event.stream == 0:
        return False
    return True


def _check_failed(conn: Connection) -> None:
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn.send(Error(code="protocol", message="bad peer"))  # the one fatal error still goes
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(token=1))


def _hypothesis_chooser(data: st.DataObject) -> Choose:
    return lambda low, high: data.draw(st.integers(low, high))


@PROTOCOL
@given(st.data())
def test_server_side_of_mutated_client_streams(data: st.DataObject) -> None:
    split = random.Random(data.draw(st.integers(0, 2**32))).randint
    feed(Role.SERVER, mutate(TALK.up, _hypothesis_chooser(data)), split, Tally())


@PROTOCOL
@given(st.data())
def test_client_side_of_mutated_server_streams(data: st.DataObject) -> None:
    split = random.Random(data.draw(st.integers(0, 2**32))).randint
    feed(Role.CLIENT, mutate(TALK.down, _hypothesis_chooser(data)), split, Tally())


@settings(max_examples=800, deadline=None, database=None)
@given(st.binary(max_size=512), st.sampled_from([Role.SERVER, Role.CLIENT]), st.booleans())
def test_random_bytes_after_a_valid_start(raw: bytes, role: Role, start: bool) -> None:
    """Garbage, alone or after a valid handshake (and so past the first state checks)."""
    head = (TALK.up[0] if role is Role.SERVER else TALK.down[0]) if start else b""
    rng = random.Random(raw)
    feed(role, head + raw, rng.randint, Tally())


def test_mutation_loop_for_a_bounded_time() -> None:
    """Plain random mutations for TETHER_FUZZ_SECONDS: more inputs than hypothesis tries."""
    rng = random.Random(int(os.environ.get("TETHER_FUZZ_SEED", "6")))
    tally = Tally()
    end = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < end:
        role = rng.choice([Role.SERVER, Role.CLIENT])
        frames = TALK.up if role is Role.SERVER else TALK.down
        feed(role, mutate(frames, rng.randint), rng.randint, tally)
    print(tally.line("protocol fuzz"))
    assert tally.inputs > 100 and tally.errors > 0


def test_the_unmutated_conversation_is_valid() -> None:
    """The corpus itself passes: mutations start from valid streams, reaching deep states."""
    for role, frames in ((Role.SERVER, TALK.up), (Role.CLIENT, TALK.down)):
        tally = Tally()
        feed(role, b"".join(frames), random.Random(1).randint, tally)
        events = TALK.up_events if role is Role.SERVER else TALK.down_events
        assert tally.errors == 0 and tally.events == events
    assert {type(m) for m in TALK.openers} == {REGISTRY[name] for name in OPERATIONS}
    assert {m.TYPE for m in TALK.messages} == set(REGISTRY)  # every message type
    every = {(name, role, kind) for name, op in OPERATIONS.items() for role, _, kind in op.moves}
    every |= {(name, role, "data") for name, op in OPERATIONS.items()
              for (role, _), channels in op.data.items() if channels}
    assert TALK.steps == every  # every transition of every table


# --- the path resolver ------------------------------------------------------------------------


@dataclass
class Tree:
    base: Path
    root: Path
    outside: Path

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every entry under base (not following symlinks): (mode, size)."""
        out = {}
        for dirpath, dirs, files, dir_fd in os.fwalk(self.base, follow_symlinks=False):
            for name in dirs + files:
                st_ = os.lstat(name, dir_fd=dir_fd)
                size = st_.st_size if stat.S_ISREG(st_.st_mode) else 0
                out[os.path.join(dirpath, name)] = (st_.st_mode, size)
        return out


def _make_tree(base: Path) -> Tree:
    root, outside = base / "root", base / "outside"
    (root / "a" / "deep").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "f").write_bytes(b"file")
    (root / "a" / "b").write_bytes(b"bee")
    (root / "é").mkdir()
    (root / "back\\slash").write_bytes(b"bs")
    links = {"up": "..", "abs": "/", "out": "../outside", "outfile": "../outside/secret",
             "in": "a", "loop": "loop", "dangling": "nowhere", "etc": "/etc/passwd"}
    for name, target in links.items():
        (root / name).symlink_to(target)
    (root / "a" / "back").symlink_to("../..")
    os.mkfifo(root / "fifo")
    with contextlib.suppress(OSError):  # a character device (/dev/null's numbers) where allowed
        os.mknod(root / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
    return Tree(base, root, outside)


COMPONENTS = ["..", ".", "", "a", "b", "deep", "f", "up", "abs", "out", "outfile", "in", "loop",
              "dangling", "etc", "back", "fifo", "dev", "sock", "é", "back\\slash", "\\",
              "a\\..", "..\\..", "\0", "x\0y", "new", "\u202e", "\udcff", "\ud800", "x" * 300,
              "...", " ", "~", "$HOME", "%2e%2e"]
NAMES = ["new", "f", "", ".", "..", "a/b", "..\\x", "\0", "x" * 300, "\udcff", "\ud800", "é",
         "fifo"]
# A target with a lone surrogate is left out: test_a_lone_surrogate_in_a_symlink_target below.
LINK_TARGETS = ["f", "a/b", "..", "../..", "/etc", "a/../..", "in/..", "up", "a/back/x", "",
                "x" * 300]


@st.composite
def path_strings(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(COMPONENTS), min_size=0, max_size=6))
    lead = draw(st.sampled_from(["", "", "", "/", "//"]))
    trail = draw(st.sampled_from(["", "", "/"]))
    return lead + "/".join(parts) + trail


def _real(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _inside(tree: Tree, real: str) -> bool:
    root = str(tree.root)
    return real == root or real.startswith(root + "/")


def _safe(call: Callable[[], object]) -> object | None:
    """The call's result, or None if it raised a RemoteError; anything else propagates."""
    try:
        return call()
    except RemoteError:
        return None


def exercise(tree: Tree, area: FileArea, path: str, name: str, target: str) -> int:
    """Every resolver entry point for one path; returns how many calls succeeded."""
    ok = 0
    resolved = _safe(lambda: area.resolve(path))
    if resolved is not None:
        dir_fd, last = resolved  # type: ignore[misc]
        try:
            assert _inside(tree, _real(dir_fd)), (path, _real(dir_fd))
            assert last is None or "/" not in last
        finally:
            os.close(dir_fd)
        ok += 1
    opened = _safe(lambda: area.open_source(path))
    if opened is not None:
        source: SourceFile = opened  # type: ignore[assignment]
        try:
            st_ = os.fstat(source.fd)
            assert _inside(tree, _real(source.fd)) and stat.S_ISREG(st_.st_mode), (
                path, _real(source.fd))
        finally:
            source.close()
        ok += 1
    listing = _safe(lambda: list(area.walk(path)))
    if listing is not None:
        assert len(listing) < 100  # symlinks are not followed: the tree is small
        ok += 1
    ok += _exercise_put(tree, area, path, name, target)
    return ok


def _exercise_put(tree: Tree, area: FileArea, path: str, name: str, target: str) -> int:
    target_ = _safe(lambda: area.put_target(path, name))
    if target_ is None:
        return 0
    dir_fd, entry, shown = target_  # type: ignore[misc]
    try:
        assert _inside(tree, _real(dir_fd)), (path, name, _real(dir_fd))
        assert check_name(entry) == entry
        partial = _safe(lambda: area.open_partial(dir_fd, entry, exists_ok=True, resume=True))
        if partial is not None:
            assert _inside(tree, _real(partial.fd))  # type: ignore[attr-defined]
            partial.discard()  # type: ignore[attr-defined]
        rel = os.path.normpath(os.path.dirname(shown) or ".")  # as server/transfer.py has it
        # what is shown is where the entry really is: a symlink's depth is counted from it
        assert rel == os.path.relpath(_real(dir_fd), tree.root), (path, name, shown)
        link = entry + ".lnk"
        # the link's own path: beside the entry, where the put above resolved to
        _safe(lambda: area.make_symlink(f"{shown}.lnk", link, target, False))
        if os.path.islink(f"{_real(dir_fd)}/{link}"):
            os.unlink(link, dir_fd=dir_fd)
            # the target, read from where the link is, stays below the root (links the
            # admin placed, like "up" -> "..", are the admin's business, not the client's)
            where = os.path.normpath(os.path.join(_real(dir_fd), target))
            assert _inside(tree, where), f"a confined symlink leads out: {shown}.lnk -> {target}"
    finally:
        os.close(dir_fd)
    return 1



@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return _make_tree(tmp_path_factory.mktemp("fuzz-tree"))


def _check_unchanged(tree: Tree, before: dict[str, tuple[int, int]]) -> None:
    after = tree.snapshot()
    assert after == before, {k: after.get(k) for k in set(after) ^ set(before)}


@PATHS
@given(path=path_strings(), name=st.sampled_from(NAMES), target=st.sampled_from(LINK_TARGETS))
def test_confined_paths_never_leave_the_root(tree: Tree, path: str, name: str,
                                             target: str) -> None:
    before = tree.snapshot()
    exercise(tree, FileArea(tree.root, confined=True), path, name, target)
    _check_unchanged(tree, before)


def test_path_loop_for_a_bounded_time(tree: Tree) -> None:
    rng = random.Random(int(os.environ.get("TETHER_FUZZ_SEED", "6")))
    area = FileArea(tree.root, confined=True)
    before = tree.snapshot()
    tried = succeeded = 0
    end = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < end:
        parts = [rng.choice(COMPONENTS) for _ in range(rng.randint(0, 6))]
        path = rng.choice(["", "", "/"]) + "/".join(parts) + rng.choice(["", "/"])
        succeeded += exercise(tree, area, path, rng.choice(NAMES), rng.choice(LINK_TARGETS))
        tried += 1
    _check_unchanged(tree, before)
    print(f"path fuzz: {tried} paths, {succeeded} calls resolved inside the root, 0 escapes, "
          f"0 exceptions but RemoteErrors")
    assert tried > 100 and succeeded > 0


# --- what the fuzzing found in the file area and partial files (now fixed there) -------------


def test_a_name_too_long_for_the_disk_is_a_remote_error(tree: Tree) -> None:
    area = FileArea(tree.root, confined=True)
    dir_fd, name, _ = area.put_target("", "x" * 300)
    try:
        with pytest.raises(RemoteError):
            area.open_partial(dir_fd, name, exists_ok=False, resume=True)
    finally:
        os.close(dir_fd)


def test_a_lone_surrogate_in_a_path_is_a_remote_error(tree: Tree) -> None:
    with pytest.raises(RemoteError):
        FileArea(tree.root, confined=True).open_source("\ud800")


def test_put_target_keeps_no_descriptor_on_failure(tree: Tree) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for path, name in (("\ud800", "n"), ("", "\ud800"), ("f/", "n"), ("nope/x", "n")):
        with pytest.raises(RemoteError):
            FileArea(tree.root, confined=True).put_target(path, name)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_trailing_dot_is_shown_where_the_entry_is(tree: Tree) -> None:
    dir_fd, name, shown = FileArea(tree.root, confined=True).put_target("a/x/.", "")
    os.close(dir_fd)
    assert (name, shown) == ("x", "a/x")


def test_a_lone_surrogate_in_a_symlink_target_is_a_remote_error(tree: Tree) -> None:
    area = FileArea(tree.root, confined=True)
    with pytest.raises(RemoteError):
        area.make_symlink(".", "surrogate.lnk", "\ud800", False)
