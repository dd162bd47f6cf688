"""Protocol messages: frozen records, and the one place their wire form is made and checked.

Each message class names its wire type (``TYPE``, the header's ``"t"``), which role may send it
(``SENDERS``) and whether it lives on stream 0 (``CONNECTION``). The header is generated from the
record's fields; decoding checks every field's type against the annotation, so a handler never
sees a wrong type. :data:`REGISTRY` is the explicit allow-list from wire type to class: nothing
else is ever looked up by a peer-supplied name (the ``sync`` messages, in sync_messages.py,
add themselves to it; the decoder imports that module).

Messages are :class:`~tether.protocol.records.Record` classes rather than dataclasses, and this
module imports neither ``typing`` nor ``dataclasses``: it is on the path of every ``tether run``
(see records.py for what that saves). It does not use postponed annotations, so each field's
annotation is a real type from which :mod:`tether.protocol.decode` builds the type check once.
"""

from enum import Enum

from tether.protocol.records import Record, Value, field, init

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


MAX_FILES = 512  # files in one batch or fetch (docs/PROTOCOL.md, "Batches")
MAX_BYTES = 4 * 1024 * 1024  # bytes of content in one batch or fetch (the initial window)

BOTH = frozenset({Role.CLIENT, Role.SERVER})
CLIENT = frozenset({Role.CLIENT})
SERVER = frozenset({Role.SERVER})


class Message(Record):
    """Base of all messages. ``stream`` is carried in the frame prefix, not in the header.

    :meth:`problem` is the message's own check beyond field types (a batch's caps, a listing's
    lists agreeing in length), run by the connection as the message arrives."""

    if TYPE_CHECKING:
        TYPE: ClassVar[str]
        SENDERS: ClassVar[frozenset[Role]]
        CONNECTION: ClassVar[bool]
        OPENS: ClassVar[bool]
        FINAL: ClassVar[bool]
    TYPE = ""
    SENDERS = BOTH
    CONNECTION = False  # True: only on stream 0
    OPENS = False  # True: opens a new stream
    FINAL = False  # True: the sender's last message on its stream

    stream: int = field(default=0, kw_only=True)

    def problem(self, request: "Message | None") -> "str | None":
        """What is wrong with this message's values, if anything; ``request`` is the message
        that opened its stream. An opener with a problem is refused with ``bad_request``; any
        other message with a problem is a protocol error."""
        return None

    def to_header(self) -> "dict[str, Any]":
        values = self.__dict__
        header = {"t": self.TYPE}
        for f in self.FIELDS:
            if f.name != "stream":
                header[f.name] = values[f.name]
        return header


# --- connection messages (stream 0) -------------------------------------------------------------


class Hello(Message):
    """Client's first frame: the protocol versions it speaks."""

    TYPE = "hello"
    SENDERS = CLIENT
    CONNECTION = True
    versions: list[int]
    software: str = ""
    user: str = ""  # the Unix account asked for (user@host); "" for the server's choice

    def problem(self, request: "Message | None") -> "str | None":
        return account_problem("hello", self.user)

    def to_header(self) -> "dict[str, Any]":
        return _without_empty_user(super().to_header())


# What a server's current key signs to announce its next one in ``welcome`` (key rotation).
NEXT_KEY_CONTEXT = b"tether next server key v1\0"


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
    user: str = ""  # the Unix account this session runs as, when one was mapped
    # during a key rotation: the next certificate (base64 DER), and the current key's signature
    # over it (base64), so a client pins the next key before it takes over (docs/PROTOCOL.md)
    next_cert: str = ""
    next_proof: str = ""

    def problem(self, request: "Message | None") -> "str | None":
        return account_problem("welcome", self.user)

    def to_header(self) -> "dict[str, Any]":
        """``user`` and the rotation fields only when set: every other welcome is the same
        bytes as before they existed."""
        header = _without_empty_user(super().to_header())
        if not self.next_cert:
            del header["next_cert"], header["next_proof"]
        return header


MAX_ACCOUNT = 32  # characters of a Unix account name (useradd's limit)
_ACCOUNT_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_ACCOUNT_REST = _ACCOUNT_FIRST | frozenset("0123456789.-")


def account_problem(what: str, user: str) -> "str | None":
    """Why ``user`` cannot be a Unix account name (a letter or ``_``, then letters, digits,
    ``_ . -``; at most 32), or None: an account name reaches the server's logs and the
    client's terminal, so nothing else is carried."""
    if not user:
        return None
    if (len(user) > MAX_ACCOUNT or user[0] not in _ACCOUNT_FIRST
            or not set(user) <= _ACCOUNT_REST):
        return f"{what}.user is not a Unix account name ({len(user)} characters)"
    return None


def _without_empty_user(header: "dict[str, Any]") -> "dict[str, Any]":
    """``user`` is sent only when set: a hello or welcome without it is byte for byte what it
    was before accounts existed."""
    if not header.get("user"):
        header.pop("user", None)
    return header


class Error(Message):
    """On stream 0: fatal, the sender closes the connection. On a stream: ends that stream."""

    TYPE = "error"
    FINAL = True
    code: str
    message: str


class Ping(Message):
    TYPE = "ping"
    CONNECTION = True
    token: int = 0


class Pong(Message):
    TYPE = "pong"
    CONNECTION = True
    token: int = 0


# --- stream messages --------------------------------------------------------------------------


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


class Started(Message):
    TYPE = "started"
    SENDERS = SERVER
    pid: int


class Eof(Message):
    """The sender will send no more DATA on ``channel`` of this stream."""

    TYPE = "eof"
    channel: int = 0


class Credit(Message):
    """Lets the peer send ``size`` more bytes of DATA on this stream (flow control)."""

    TYPE = "credit"
    size: int


class Signal(Message):
    """Deliver a signal (by name, e.g. ``INT``) to the stream's remote process group."""

    TYPE = "signal"
    SENDERS = CLIENT
    name: str


class Exit(Message):
    """The command ended; ``signal`` is set when a signal killed it. Server's final message."""

    TYPE = "exit"
    SENDERS = SERVER
    FINAL = True
    status: int | None
    signal: int | None = None
    timed_out: bool = False
    duration: float = 0.0

    @property
    def shell_status(self) -> int:
        """The status as a shell reports it: 128+N when signal N killed the command."""
        return self.status if self.status is not None else 128 + (self.signal or 0)


class Close(Message):
    """Client's final message on a stream: sent after the server's final one, or to abandon it."""

    TYPE = "close"
    SENDERS = CLIENT
    FINAL = True


# --- transfer messages (docs/PROTOCOL.md, "Transfers") ---------------------------------------


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


class Ready(Message):
    """The server kept ``offset`` bytes of an earlier partial, whose hash is ``prefix_hash``."""

    TYPE = "ready"
    SENDERS = SERVER
    offset: int
    prefix_hash: str | None = None


class Begin(Message):
    """The client will send data from ``offset`` (0: the partial is discarded)."""

    TYPE = "begin"
    SENDERS = CLIENT
    offset: int


class Commit(Message):
    """All data is sent; the whole file hashes to ``hash`` and is ``size`` bytes long."""

    TYPE = "commit"
    SENDERS = CLIENT
    size: int
    hash: str


class Get(Message):
    """Open a stream that reads the file at ``path``; resume after the client's ``offset``
    bytes if they hash to ``prefix_hash``."""

    TYPE = "get"
    SENDERS = CLIENT
    OPENS = True
    path: str
    offset: int = 0
    prefix_hash: str | None = None


class Meta(Message):
    """The file a get will send: its size and metadata, and the offset data starts at."""

    TYPE = "meta"
    SENDERS = SERVER
    size: int
    mode: int
    mtime_ns: int
    offset: int = 0


class List(Message):
    """Open a stream that lists the tree at ``path`` as ``entry`` messages, then ``done``."""

    TYPE = "list"
    SENDERS = CLIENT
    OPENS = True
    path: str
    batched: bool = False  # answer with ``entries`` (many at once) instead of ``entry``


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


class Entries(Message):
    """Many entries of a listing at once, one list per field: ``names`` are the paths below
    the listed root with components joined by ``/`` (``""`` for the root itself)."""

    TYPE = "entries"
    SENDERS = SERVER
    names: list[str]
    kinds: list[str]
    sizes: list[int]
    modes: list[int]
    mtimes: list[int]
    targets: list[str | None]

    def problem(self, request: "Message | None") -> "str | None":
        count = len(self.names)
        if any(len(values) != count for values in (self.kinds, self.sizes, self.modes,
                                                     self.mtimes, self.targets)):
            return "the server listed entries whose fields differ in number"
        return None


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
    names: list[str] = field(default_factory=list)
    created: bool = False


class Batch(Message):
    """Open a stream that stores many small files below the directory ``path`` at once: the
    lists give, per file, its name below ``path`` (components joined by ``/``), size, mode,
    mtime and hash; the contents follow as DATA, concatenated in that order."""

    TYPE = "batch"
    SENDERS = CLIENT
    OPENS = True
    path: str
    names: list[str]
    sizes: list[int]
    modes: list[int]
    mtimes: list[int]
    hashes: list[str]
    force: bool = False
    rename: bool = False

    def problem(self, request: "Message | None") -> "str | None":
        return batch_problem(len(self.names), self.sizes, self.modes, self.mtimes,
                              self.hashes)


class Fetch(Message):
    """Open a stream that reads many small files below ``path`` at once (names as in batch)."""

    TYPE = "fetch"
    SENDERS = CLIENT
    OPENS = True
    path: str
    names: list[str]

    def problem(self, request: "Message | None") -> "str | None":
        if len(self.names) > MAX_FILES:
            return f"a batch of {len(self.names)} files exceeds the limit of {MAX_FILES}"
        return None


class Files(Message):
    """The files a fetch will send, in the order asked: sizes, modes, mtimes and hashes; their
    contents follow as DATA, concatenated."""

    TYPE = "files"
    SENDERS = SERVER
    sizes: list[int]
    modes: list[int]
    mtimes: list[int]
    hashes: list[str]

    def problem(self, request: "Message | None") -> "str | None":
        count = len(request.names) if isinstance(request, Fetch) else len(self.sizes)
        problem = batch_problem(count, self.sizes, self.modes, self.mtimes, self.hashes)
        return None if problem is None else f"the server's answer to a fetch: {problem}"


def batch_problem(count: int, sizes: list[int], *lists: "list[int] | list[str]"
                   ) -> "str | None":
    """A batch's per-file lists agree in length and respect the caps (PROTOCOL.md, "Batches")."""
    if len(sizes) != count or any(len(values) != count for values in lists):
        return "a batch's lists of names, sizes, modes, mtimes and hashes differ in length"
    if count > MAX_FILES:
        return f"a batch of {count} files exceeds the limit of {MAX_FILES}"
    if any(size < 0 for size in sizes):
        return "negative size in a batch"
    total = sum(sizes)
    if total > MAX_BYTES:
        return f"a batch of {total} bytes exceeds the limit of {MAX_BYTES}"
    return None


# --- shell messages (docs/PROTOCOL.md, "Shells") ------------------------------------------------


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


class Resize(Message):
    """The client's terminal changed size."""

    TYPE = "resize"
    SENDERS = CLIENT
    rows: int
    cols: int


class Status(Message):
    """Line mode: command number ``index`` (from 1) finished with ``status``; all its output
    on both channels was sent before this message."""

    TYPE = "status"
    SENDERS = SERVER
    index: int
    status: int


REGISTRY: "dict[str, type[Message]]" = {
    cls.TYPE: cls
    for cls in (
        Hello, Welcome, Error, Ping, Pong,
        Exec, Started, Eof, Credit, Signal, Exit, Close,
        Put, Ready, Begin, Commit, Get, Meta, List, Entry, Entries, Done, Batch, Fetch, Files,
        Shell, Resize, Status,
    )
}


class Data(Value):
    """Raw bytes on a stream's channel (a DATA frame, not a JSON message)."""

    ORDER = __slots__ = ("stream", "channel", "data")
    stream: int
    channel: int
    data: bytes | bytearray  # a large body is the buffer it was received into

    def __init__(self, stream: int, channel: int, data: bytes | bytearray) -> None:
        init(self, "stream", stream)
        init(self, "channel", channel)
        init(self, "data", data)


class Refused(Value):
    """An opening message whose values are wrong (:meth:`Message.problem`): the stream is open
    and the application answers it with a stream ``error`` of code ``bad_request``."""

    ORDER = __slots__ = ("stream", "request", "reason")
    stream: int
    request: Message
    reason: str

    def __init__(self, stream: int, request: Message, reason: str) -> None:
        init(self, "stream", stream)
        init(self, "request", request)
        init(self, "reason", reason)
