"""Shared helpers for the protocol tests: raw frame builders, sample messages, a socketless pair.

Like h11's ``tests/helpers.py``: a client and a server :class:`Connection` wired to each other
with no sockets, so every test speaks real bytes through both state machines.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from typing import Any

from tether.protocol.connection import CLOSED, NEED_DATA, Connection, Event
from tether.protocol.forwarding import Connect, Connected, Incoming, Listen, Listening
from tether.protocol.frames import KIND_DATA, KIND_MSG, MAGIC, PREFIX, Frame, FrameDecoder
from tether.protocol.messages import (
    REGISTRY,
    Batch,
    Begin,
    Close,
    Commit,
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
from tether.protocol.records import replace
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

# --- raw frames (bypassing every local check, as a hostile or buggy peer would) ---------------


def prefix(
    kind: int = KIND_MSG,
    channel: int = 0,
    stream: int = 0,
    header_len: int = 0,
    body_len: int = 0,
    magic: bytes = MAGIC,
) -> bytes:
    """A 16-byte frame prefix with any field values at all."""
    return PREFIX.pack(magic, kind, channel, stream, header_len, body_len)


def raw_msg(header: bytes | dict[str, Any], stream: int = 0, body: bytes = b"") -> bytes:
    """A MSG frame carrying exactly these header bytes (a dict is dumped, NaN allowed)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return prefix(KIND_MSG, 0, stream, len(raw), len(body)) + raw + body


def raw_data(stream: int, channel: int, body: bytes) -> bytes:
    """A DATA frame with no flow-control or role accounting at all."""
    return prefix(KIND_DATA, channel, stream, 0, len(body)) + body


def wire(msg: Message, body: bytes = b"") -> bytes:
    """``msg`` as a peer would put it on the wire, whether or not that peer may send it."""
    return raw_msg(msg.to_header(), msg.stream, body)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (no accidental all-zero bodies)."""
    return random.Random(seed).randbytes(size)


# --- sample messages: one of every type in the registry ----------------------------------------

SAMPLES: dict[str, Message] = {
    "hello": Hello(versions=[1], software="tether/test"),
    "welcome": Welcome(version=1, server_name="box", permissions=["exec", "get", "put"]),
    "error": Error(code="bad_request", message="nope"),
    "ping": Ping(token=7),
    "pong": Pong(token=7),
    "exec": Exec(argv=["echo", "héllo ✓"], env={"LANG": "C.UTF-8"}, timeout=2.5, cwd="/tmp"),
    "started": Started(pid=4242),
    "eof": Eof(channel=0),
    "credit": Credit(size=65536),
    "signal": Signal(name="INT"),
    "exit": Exit(status=0, duration=0.25),
    "close": Close(),
    "put": Put(path="/tmp/x", size=5),
    "ready": Ready(offset=0),
    "begin": Begin(offset=0),
    "commit": Commit(size=5, hash="abc"),
    "get": Get(path="/tmp/x"),
    "meta": Meta(size=5, mode=0o644, mtime_ns=1),
    "list": List(path="/tmp"),
    "entry": Entry(parts=["a", "b"], kind="file"),
    "done": Done(path="/tmp/x", size=5),
    "entries": Entries(names=["", "a", "a/l"], kinds=["dir", "dir", "symlink"], sizes=[0] * 3,
                       modes=[0o755, 0o700, 0o777], mtimes=[1, 2, 3], targets=[None, None, "x"]),
    "batch": Batch(path="t", names=["a/b.txt", "c"], sizes=[3, 0], modes=[0o644, 0o600],
                   mtimes=[1, 2], hashes=["blake3:" + "0" * 64] * 2),
    "fetch": Fetch(path="t", names=["a/b.txt", "c"]),
    "files": Files(sizes=[3, 0], modes=[0o644, 0o600], mtimes=[1, 2],
                   hashes=["blake3:" + "0" * 64] * 2),
    "shell": Shell(pty=False, argv=["bash", "-l"], rows=40, cols=132),
    "resize": Resize(rows=50, cols=200),
    "status": Status(index=1, status=0),
    "connect": Connect(host="db.internal", port=5432, origin="127.0.0.1:50000"),
    "connected": Connected(host="10.0.0.5", port=5432),
    "listen": Listen(port=0),
    "listening": Listening(host="127.0.0.1", port=40123),
    "incoming": Incoming(id=1, origin="127.0.0.1:50001"),
    "sync": Sync(path="dest", delete=True, filters=["*.o"]),
    "sync_list": SyncList(names=["d", "d/f"], kinds=["dir", "file"], sizes=[0, 3],
                          modes=[0o755, 0o644], mtimes=[1, 2], targets=["", ""],
                          hashes=["", ""]),
    "sync_listed": SyncListed(count=2),
    "sync_want": SyncWant(actions=["mkdir", "send"], wanted=[1], sigs=[0], offsets=[0],
                          prefixes=[""]),
    "sync_file": SyncFile(index=1, size=3),
    "sync_commit": SyncCommit(index=1, hash="blake3:" + "0" * 64),
    "sync_batch": SyncBatch(indices=[1], sizes=[3], hashes=["blake3:" + "0" * 64]),
    "sync_sent": SyncSent(),
    "sync_deleted": SyncDeleted(names=["old"]),
}


def sample(type_name: str, stream: int | None = None) -> Message:
    """The sample message of this type; on stream 0 if it is a connection message, else ``stream``.
    """
    msg = SAMPLES[type_name]
    if stream is None:
        stream = 0 if msg.CONNECTION else 1
    return replace(msg, stream=stream)


def types_sent_by(role: Role) -> list[str]:
    return sorted(name for name, cls in REGISTRY.items() if role in cls.SENDERS)


def types_not_sent_by(role: Role) -> list[str]:
    return sorted(name for name, cls in REGISTRY.items() if role not in cls.SENDERS)


# --- driving one connection ------------------------------------------------------------------


def events_from(conn: Connection, data: bytes = b"", *, eof: bool = False) -> list[Event]:
    """Feed ``data`` (and EOF if asked), then collect events up to NEED_DATA or CLOSED."""
    if data:
        conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if event is CLOSED:
            return events


def frames_from(decoder: FrameDecoder, pieces: Iterable[bytes]) -> list[Frame]:
    """Feed ``pieces`` one by one, collecting every frame as soon as it is complete."""
    frames: list[Frame] = []
    for piece in pieces:
        decoder.feed(piece)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed), with no empty pieces:
    feeding ``b""`` means EOF."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- a client and a server with no sockets ----------------------------------------------------


class Pair:
    """A client and a server Connection; each ``*_sends`` returns what the other side saw."""

    def __init__(self, **options: Any) -> None:
        self.client = Connection(Role.CLIENT, **options)
        self.server = Connection(Role.SERVER, **options)

    def client_sends(self, msg: Message, body: bytes = b"") -> list[Event]:
        return events_from(self.server, self.client.send(msg, body))

    def server_sends(self, msg: Message, body: bytes = b"") -> list[Event]:
        return events_from(self.client, self.server.send(msg, body))

    def client_data(self, stream: int, channel: int, data: bytes) -> list[Event]:
        return events_from(self.server, self.client.send_data(stream, channel, data))

    def server_data(self, stream: int, channel: int, data: bytes) -> list[Event]:
        return events_from(self.client, self.server.send_data(stream, channel, data))

    def to_server(self, raw: bytes) -> list[Event]:
        """Bytes the client's state machine never vetted (a hostile or buggy client)."""
        return events_from(self.server, raw)

    def to_client(self, raw: bytes) -> list[Event]:
        return events_from(self.client, raw)

    def handshake(self) -> None:
        assert self.client_sends(Hello(versions=[1])) == [Hello(versions=[1])]
        assert self.server_sends(Welcome(version=1)) == [Welcome(version=1)]

    def open_exec(self, started: bool = True) -> int:
        """Open an exec stream from the client (and, if ``started``, answer it with
        ``started``, as a server does once the command runs); returns its id."""
        stream = self.client.next_stream_id()
        msg = Exec(argv=["true"], stream=stream)
        assert self.client_sends(msg) == [msg]
        if started:
            assert self.server_sends(Started(pid=1, stream=stream)) == [
                Started(pid=1, stream=stream)]
        return stream


def handshaken_pair(**options: Any) -> Pair:
    """A pair after hello/welcome; ``options`` go to both Connections (``window_budget``)."""
    pair = Pair(**options)
    pair.handshake()
    return pair
