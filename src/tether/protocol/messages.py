"""Protocol messages: frozen dataclasses, and the one place their wire form is made and checked.

Each message class names its wire type (``TYPE``, the header's ``"t"``), which role may send it
(``SENDERS``) and whether it lives on stream 0 (``CONNECTION``). The header is generated from the
dataclass fields; decoding checks every field's type against the annotation, so a handler never
sees a wrong type. :data:`REGISTRY` is the explicit allow-list from wire type to class: nothing
else is ever looked up by a peer-supplied name.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from tether.errors import RemoteProtocolError


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


BOTH = frozenset({Role.CLIENT, Role.SERVER})
CLIENT = frozenset({Role.CLIENT})
SERVER = frozenset({Role.SERVER})


@dataclass(frozen=True)
class Message:
    """Base of all messages. ``stream`` is carried in the frame prefix, not in the header."""

    TYPE: ClassVar[str] = ""
    SENDERS: ClassVar[frozenset[Role]] = BOTH
    CONNECTION: ClassVar[bool] = False  # True: only on stream 0
    OPENS: ClassVar[bool] = False  # True: opens a new stream
    FINAL: ClassVar[bool] = False  # True: the sender's last message on its stream

    stream: int = field(default=0, kw_only=True)

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"t": self.TYPE}
        for f in dataclasses.fields(self):
            if f.name != "stream":
                header[f.name] = getattr(self, f.name)
        return header


# --- connection messages (stream 0) -------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """Client's first frame: the protocol versions it speaks."""

    TYPE = "hello"
    SENDERS = CLIENT
    CONNECTION = True
    versions: list[int]
    software: str = ""


@dataclass(frozen=True)
class Welcome(Message):
    """Server's answer to Hello: the explicit proof that authentication succeeded."""

    TYPE = "welcome"
    SENDERS = SERVER
    CONNECTION = True
    version: int
    software: str = ""
    server_name: str = ""
    platform: str = ""
    encoding: str = "utf-8"
    client_fingerprint: str = ""
    client_name: str = ""
    permissions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Error(Message):
    """On stream 0: fatal, the sender closes the connection. On a stream: ends that stream."""

    TYPE = "error"
    FINAL = True
    code: str
    message: str


@dataclass(frozen=True)
class Ping(Message):
    TYPE = "ping"
    CONNECTION = True
    token: int = 0


@dataclass(frozen=True)
class Pong(Message):
    TYPE = "pong"
    CONNECTION = True
    token: int = 0


# --- stream messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Exec(Message):
    """Open a stream that runs a command. ``shell``: ``argv`` is one string for the shell."""

    TYPE = "exec"
    SENDERS = CLIENT
    OPENS = True
    argv: list[str]
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    stdin: bool = True


@dataclass(frozen=True)
class Started(Message):
    TYPE = "started"
    SENDERS = SERVER
    pid: int


@dataclass(frozen=True)
class Eof(Message):
    """The sender will send no more DATA on ``channel`` of this stream."""

    TYPE = "eof"
    channel: int = 0


@dataclass(frozen=True)
class Credit(Message):
    """Lets the peer send ``size`` more bytes of DATA on this stream (flow control)."""

    TYPE = "credit"
    size: int


@dataclass(frozen=True)
class Signal(Message):
    """Deliver a signal (by name, e.g. ``INT``) to the stream's remote process group."""

    TYPE = "signal"
    SENDERS = CLIENT
    name: str


@dataclass(frozen=True)
class Exit(Message):
    """The command ended; ``signal`` is set when a signal killed it. Server's final message."""

    TYPE = "exit"
    SENDERS = SERVER
    FINAL = True
    status: int | None
    signal: int | None = None
    timed_out: bool = False
    duration: float = 0.0


@dataclass(frozen=True)
class Close(Message):
    """Client's final message on a stream: sent after the server's final one, or to abandon it."""

    TYPE = "close"
    SENDERS = CLIENT
    FINAL = True


# --- transfer messages (docs/PROTOCOL.md, "Transfers") ---------------------------------------


@dataclass(frozen=True)
class Put(Message):
    """Open a stream that stores one entry at ``path`` (``path``/``name`` if it is a directory).

    ``kind`` is ``file``, ``dir`` or ``symlink`` (with ``target``). With ``resume`` the server
    answers ``ready`` and waits for ``begin``; without it the client streams at once.
    """

    TYPE = "put"
    SENDERS = CLIENT
    OPENS = True
    path: str
    name: str = ""
    kind: str = "file"
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    target: str | None = None
    force: bool = False
    rename: bool = False
    resume: bool = False


@dataclass(frozen=True)
class Ready(Message):
    """The server kept ``offset`` bytes of an earlier partial, whose hash is ``prefix_hash``."""

    TYPE = "ready"
    SENDERS = SERVER
    offset: int
    prefix_hash: str | None = None


@dataclass(frozen=True)
class Begin(Message):
    """The client will send data from ``offset`` (0: the partial is discarded)."""

    TYPE = "begin"
    SENDERS = CLIENT
    offset: int


@dataclass(frozen=True)
class Commit(Message):
    """All data is sent; the whole file hashes to ``hash`` and is ``size`` bytes long."""

    TYPE = "commit"
    SENDERS = CLIENT
    size: int
    hash: str


@dataclass(frozen=True)
class Get(Message):
    """Open a stream that reads the file at ``path``; resume after the client's ``offset``
    bytes if they hash to ``prefix_hash``."""

    TYPE = "get"
    SENDERS = CLIENT
    OPENS = True
    path: str
    offset: int = 0
    prefix_hash: str | None = None


@dataclass(frozen=True)
class Meta(Message):
    """The file a get will send: its size and metadata, and the offset data starts at."""

    TYPE = "meta"
    SENDERS = SERVER
    size: int
    mode: int
    mtime_ns: int
    offset: int = 0


@dataclass(frozen=True)
class List(Message):
    """Open a stream that lists the tree at ``path`` as ``entry`` messages, then ``done``."""

    TYPE = "list"
    SENDERS = CLIENT
    OPENS = True
    path: str


@dataclass(frozen=True)
class Entry(Message):
    """One entry of a listing; ``parts`` is its path below the listed root, by component."""

    TYPE = "entry"
    SENDERS = SERVER
    parts: list[str]
    kind: str
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    target: str | None = None


@dataclass(frozen=True)
class Done(Message):
    """The server's final message for a transfer or listing."""

    TYPE = "done"
    SENDERS = SERVER
    FINAL = True
    path: str = ""
    size: int = 0
    hash: str = ""
    resumed_from: int = 0
    count: int = 0


# --- shell messages (docs/PROTOCOL.md, "Shells") ------------------------------------------------


@dataclass(frozen=True)
class Shell(Message):
    """Open a stream with a shell: in a pseudo-terminal (``pty``) or in line mode.

    ``argv`` empty: the user's login shell; one string: run through the shell; several: an argv.
    In line mode every DATA line on channel 0 is one command, answered by a ``status``.
    """

    TYPE = "shell"
    SENDERS = CLIENT
    OPENS = True
    pty: bool = True
    term: str = "xterm"
    rows: int = 24
    cols: int = 80
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resize(Message):
    """The client's terminal changed size."""

    TYPE = "resize"
    SENDERS = CLIENT
    rows: int
    cols: int


@dataclass(frozen=True)
class Status(Message):
    """Line mode: command number ``index`` (from 1) finished with ``status``; all its output
    on both channels was sent before this message."""

    TYPE = "status"
    SENDERS = SERVER
    index: int
    status: int


REGISTRY: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Welcome, Error, Ping, Pong,
        Exec, Started, Eof, Credit, Signal, Exit, Close,
        Put, Ready, Begin, Commit, Get, Meta, List, Entry, Done,
        Shell, Resize, Status,
    )
}


@dataclass(frozen=True, slots=True)
class Data:
    """Raw bytes on a stream's channel (a DATA frame, not a JSON message)."""

    stream: int
    channel: int
    data: bytes


# --- decoding ---------------------------------------------------------------------------------

# Annotations here are real types (this module does not use postponed evaluation), so the
# decoder reads them straight from the dataclass fields: no get_type_hints() at import time.
_HINTS: dict[type[Message], dict[str, Any]] = {
    cls: {f.name: f.type for f in dataclasses.fields(cls)} for cls in REGISTRY.values()
}


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this module, not the peer


def decode_message(header: dict[str, Any], stream: int) -> Message:
    """Build the message a header describes, or raise RemoteProtocolError saying what is wrong."""
    kind = header.get("t")
    if not isinstance(kind, str):
        raise RemoteProtocolError('header has no string "t" (message type)')
    cls = REGISTRY.get(kind)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {kind[:40]!r}")
    hints = _HINTS[cls]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "stream"}
    values: dict[str, Any] = {}
    for name, value in header.items():
        if name == "t":
            continue
        if name not in fields:
            continue  # unknown fields are ignored, so later versions can add optional ones
        if not _matches(value, hints[name]):
            raise RemoteProtocolError(f"{kind}: field {name!r} has the wrong type")
        values[name] = value
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in values and no_default:
            raise RemoteProtocolError(f"{kind}: missing field {name!r}")
    return cls(stream=stream, **values)
