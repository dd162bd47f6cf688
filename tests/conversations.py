"""Valid conversations made from the protocol's stream tables (tether.protocol.streams), not by
hand: the seeds the fuzzers (tests/protocol/test_fuzz.py, tests/hostile/test_fuzz.py) mutate.

For every operation, every way its opener can start it (``put`` of a file with and without
resume, of a directory; a shell with and without a terminal; ...), and every path each half of
its table allows (:func:`tether.protocol.streams.paths`), one stream is opened and walked by a
real client and server :class:`Connection`, so the bytes are what the two cores really send.
A table that gains a state or a message gains conversations here with no edit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.protocol import (
    NEED_DATA,
    Batch,
    Begin,
    Close,
    Commit,
    Connection,
    Credit,
    Done,
    Entries,
    Entry,
    Eof,
    Error,
    Exec,
    Exit,
    Fetch,
    Files,
    Get,
    Hello,
    List,
    Message,
    Meta,
    Ping,
    Pong,
    Put,
    Ready,
    Resize,
    Role,
    Shell,
    Signal,
    Started,
    Status,
    Welcome,
)
from tether.protocol.forwarding import Connect, Connected, Incoming, Listen, Listening
from tether.protocol.streams import OPERATIONS, paths
from tether.protocol.sync_messages import (
    Sync,
    SyncBatch,
    SyncCommit,
    SyncDeleted,
    SyncFile,
    SyncList,
    SyncListed,
    SyncSent,
    SyncWant,
)

HASH = "blake3:" + "ab" * 32

# How each operation may be opened: one opener per way its first states are chosen.
OPENERS: dict[str, list[Message]] = {
    "exec": [Exec(argv=["cat", "-"], cwd="sub", env={"A": "1"}, timeout=2.5)],
    "shell": [Shell(pty=True, rows=30, cols=100, env={"TERM": "xterm"}),
              Shell(pty=False, term="dumb")],
    "put": [Put(path="dir/", name="f.bin", size=5, mode=0o600, mtime_ns=1, resume=True),
            Put(path="g", size=5),
            Put(path="d", kind="dir", mode=0o755),
            Put(path="l", kind="symlink", target="g")],
    "get": [Get(path="dir/f.bin", offset=2, prefix_hash=HASH)],
    "list": [List(path="dir"), List(path="dir", batched=True)],
    "batch": [Batch(path="dir", names=["a", "sub/b"], sizes=[3, 2], modes=[0o644, 0o600],
                    mtimes=[1, 2], hashes=[HASH, HASH])],
    "fetch": [Fetch(path="dir", names=["a", "sub/b"])],
    "connect": [Connect(host="db.internal", port=5432, origin="127.0.0.1:50000"),
                Connect(path="/run/app.sock"), Connect(listener=1, incoming=3)],
    "listen": [Listen(port=0), Listen(host="0.0.0.0", port=8080), Listen(path="/tmp/l.sock")],
    "sync": [Sync(path="dest", push=True, delete=True, filters=["*.o", "!keep.o"]),
             Sync(path="", push=False, sources=["src", "more/"], names=["src", ""],
                  checksum=True)],
}

# A valid instance of every non-opening message, given its stream and channel (for eof).
MESSAGES: dict[str, Callable[[int, int | None], Message]] = {
    "started": lambda s, _: Started(pid=4242, stream=s),
    "eof": lambda s, ch: Eof(channel=ch or 0, stream=s),
    "credit": lambda s, _: Credit(size=11, stream=s),
    "signal": lambda s, _: Signal(name="INT", stream=s),
    "resize": lambda s, _: Resize(rows=40, cols=120, stream=s),
    "exit": lambda s, _: Exit(status=0, duration=0.25, stream=s),
    "close": lambda s, _: Close(stream=s),
    "error": lambda s, _: Error(code="failed", message="gave up", stream=s),
    "ready": lambda s, _: Ready(offset=0, stream=s),
    "begin": lambda s, _: Begin(offset=0, stream=s),
    "commit": lambda s, _: Commit(size=5, hash=HASH, stream=s),
    "meta": lambda s, _: Meta(size=5, mode=0o600, mtime_ns=1, offset=2, stream=s),
    "entry": lambda s, _: Entry(parts=["l"], kind="symlink", target="f.bin", stream=s),
    "entries": lambda s, _: Entries(names=["", "a", "l"], kinds=["dir", "file", "symlink"],
                                    sizes=[0, 3, 1], modes=[0o755, 0o644, 0o777],
                                    mtimes=[1, 1, 1], targets=[None, None, "a"], stream=s),
    "done": lambda s, _: Done(path="dir/f.bin", size=5, hash=HASH, count=2, stream=s),
    "files": lambda s, _: Files(sizes=[3, 2], modes=[0o644, 0o600], mtimes=[1, 2],
                                hashes=[HASH, HASH], stream=s),
    "status": lambda s, _: Status(index=1, status=0, stream=s),
    "connected": lambda s, _: Connected(host="10.0.0.5", port=5432, stream=s),
    "listening": lambda s, _: Listening(host="127.0.0.1", port=40123, stream=s),
    "incoming": lambda s, _: Incoming(id=2, origin="127.0.0.1:50001", stream=s),
    "sync_list": lambda s, _: SyncList(names=["d", "d/f", "l"], kinds=["dir", "file", "symlink"],
                                       sizes=[0, 3, 0], modes=[0o755, 0o644, 0o777],
                                       mtimes=[1, 2, 3], targets=["", "", "d/f"],
                                       hashes=["", HASH, ""], stream=s),
    "sync_listed": lambda s, _: SyncListed(count=3, stream=s),
    "sync_want": lambda s, _: SyncWant(actions=["mkdir", "send", "symlink"], wanted=[1],
                                       sigs=[0], offsets=[0], prefixes=[""], stream=s),
    "sync_file": lambda s, _: SyncFile(index=1, size=3, stream=s),
    "sync_commit": lambda s, _: SyncCommit(index=1, hash=HASH, stream=s),
    "sync_batch": lambda s, _: SyncBatch(indices=[1], sizes=[3], hashes=[HASH], stream=s),
    "sync_sent": lambda s, _: SyncSent(stream=s),
    "sync_deleted": lambda s, _: SyncDeleted(names=["old", "old/x"], stream=s),
}

Step = tuple[str, int | None]


@dataclass
class Conversation:
    """The bytes each side sent, frame by frame, and what its peer's core made of them."""

    up: list[bytes] = field(default_factory=list)  # client -> server
    down: list[bytes] = field(default_factory=list)  # server -> client
    openers: list[Message] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # every message, both ways
    steps: set[tuple[str, Role, str]] = field(default_factory=set)  # (operation, sender, type)
    up_events: int = 0  # events the server's core yields for ``up`` (pings are answered)
    down_events: int = 0


class _Talk:
    """A client and a server core wired together, recording every frame."""

    def __init__(self) -> None:
        self.client, self.server = Connection(Role.CLIENT), Connection(Role.SERVER)
        self.talk = Conversation()

    def send(self, role: Role, msg: Message) -> None:
        conn, peer = ((self.client, self.server) if role is Role.CLIENT
                      else (self.server, self.client))
        self._deliver(role, conn.send(msg), peer)
        self.talk.messages.append(msg)
        if msg.OPENS:
            self.talk.openers.append(msg)

    def data(self, role: Role, stream: int, channel: int) -> None:
        conn, peer = ((self.client, self.server) if role is Role.CLIENT
                      else (self.server, self.client))
        self._deliver(role, conn.send_data(stream, channel, b"bytes \xff%d" % channel), peer)

    def _deliver(self, role: Role, raw: bytes, peer: Connection) -> None:
        (self.talk.up if role is Role.CLIENT else self.talk.down).append(raw)
        peer.receive_data(raw)
        while peer.next_event() is not NEED_DATA:
            if role is Role.CLIENT:
                self.talk.up_events += 1
            else:
                self.talk.down_events += 1
        answer = peer.data_to_send()  # a pong
        if answer:
            other = Role.SERVER if role is Role.CLIENT else Role.CLIENT
            conn = self.server if role is Role.CLIENT else self.client
            self._deliver(other, answer, conn)

    def walk(self, stream: int, op: str, role: Role, steps: list[Step]) -> None:
        for kind, channel in steps:
            self.talk.steps.add((op, role, kind))
            if kind == "data":
                assert channel is not None
                self.data(role, stream, channel)
            else:
                self.send(role, MESSAGES[kind](stream, channel))


def conversation() -> Conversation:
    """One connection: the handshake, a ping, then a stream per (opener, pair of paths)."""
    t = _Talk()
    t.send(Role.CLIENT, Hello(versions=[1], software="fuzz/1"))
    t.send(Role.SERVER, Welcome(version=1, software="tether/x", server_name="srv",
                                platform="linux", client_fingerprint="SHA256:x",
                                client_name="c", permissions=["exec", "get", "put", "shell"]))
    t.send(Role.CLIENT, Ping(token=7))  # the server's core answers it with a pong
    t.send(Role.SERVER, Ping(token=8))
    t.send(Role.CLIENT, Pong(token=9))  # an unasked-for pong is absorbed
    stream = 1
    for name, op in OPERATIONS.items():
        for opener in OPENERS[name]:
            client_first, server_first = op.first(opener)
            ups = list(paths(op, Role.CLIENT, client_first))
            downs = list(paths(op, Role.SERVER, server_first))
            # a half that sends window requests (sync_list) goes first: answers follow them
            client_asks = op.window is not None and (
                Role.CLIENT, client_first, op.window[0]) in op.moves
            for up, down in _pairs(ups, downs):
                t.send(Role.CLIENT, _on(opener, stream))
                if client_asks:
                    t.walk(stream, name, Role.CLIENT, up[:-1])
                t.walk(stream, name, Role.SERVER, down[:-1])
                if not client_asks:
                    t.walk(stream, name, Role.CLIENT, up[:-1])
                t.walk(stream, name, Role.SERVER, down[-1:])
                t.walk(stream, name, Role.CLIENT, up[-1:])
                stream += 2
    assert t.client.open_streams == t.server.open_streams == 0
    return t.talk


def _pairs(ups: list[list[Step]], downs: list[list[Step]]) -> list[tuple[list[Step], ...]]:
    """Each path of either half at least once, the shorter list cycled."""
    count = max(len(ups), len(downs))
    return list(itertools.islice(zip(itertools.cycle(ups), itertools.cycle(downs),
                                     strict=False), count))


def _on(msg: Message, stream: int) -> Message:
    return type(msg)(**{f.name: getattr(msg, f.name) for f in msg.FIELDS if f.name != "stream"},
                     stream=stream)
