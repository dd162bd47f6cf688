"""The ``sync`` operation's messages (docs/PROTOCOL.md, "Sync"), registered in
:data:`tether.protocol.messages.REGISTRY` when this module is imported (the decoder imports it,
so every peer-supplied type is looked up in the complete allow-list). Kept apart from
messages.py so that each module stays one size a reader can hold.
"""

from tether.protocol.messages import CLIENT, REGISTRY, SERVER, Message, batch_problem
from tether.protocol.records import field

MAX_LIST = 256  # entries in one sync_list, sync_want or sync_deleted
LIST_WINDOW = 8  # sync_lists a source may have sent that no sync_want answered yet


class Sync(Message):
    """Open a stream that makes the tree at ``path`` (push) or on the client (pull) hold what
    the source holds, sending only what differs (docs/PROTOCOL.md, "Sync")."""

    TYPE = "sync"
    SENDERS = CLIENT
    OPENS = True
    path: str
    push: bool = True
    sources: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    single: bool = False
    checksum: bool = False
    delete: bool = False
    dry_run: bool = False
    safe_links: bool = False
    filters: list[str] = field(default_factory=list)
    hash_cache: bool = True

    def problem(self, request: "Message | None") -> "str | None":
        if len(self.sources) != len(self.names):
            return "a sync's sources and names differ in number"
        too_many = len(self.sources) > MAX_LIST or len(self.filters) > 4 * MAX_LIST
        return "a sync names too many sources or filters" if too_many else None


class SyncList(Message):
    """Entries of the source's tree, numbered on from the previous lists'."""

    TYPE = "sync_list"
    names: list[str]
    kinds: list[str]
    sizes: list[int]
    modes: list[int]
    mtimes: list[int]
    targets: list[str]
    hashes: list[str]

    def problem(self, request: "Message | None") -> "str | None":
        count = len(self.names)
        if any(len(values) != count for values in (self.kinds, self.sizes, self.modes,
                                                     self.mtimes, self.targets, self.hashes)):
            return "a sync_list's lists differ in length"
        if not 0 < count <= MAX_LIST:
            return f"a sync_list must hold 1 to {MAX_LIST} entries, not {count}"
        if any(size < 0 for size in self.sizes):
            return "negative size in a sync_list"
        return None


class SyncListed(Message):
    TYPE = "sync_listed"
    count: int


class SyncWant(Message):
    """The destination's answer to one sync_list: what it does per entry, and what it wants."""

    TYPE = "sync_want"
    actions: list[str]
    wanted: list[int]
    sigs: list[int]
    offsets: list[int]
    prefixes: list[str]

    def problem(self, request: "Message | None") -> "str | None":
        count = len(self.wanted)
        if any(len(values) != count for values in (self.sigs, self.offsets, self.prefixes)):
            return "a sync_want's lists differ in length"
        if len(self.actions) > MAX_LIST or count > MAX_LIST:
            return "a sync_want answers more entries than a sync_list holds"
        if any(n < 0 for n in (*self.wanted, *self.sigs, *self.offsets)):
            return "negative number in a sync_want"
        return None


class SyncFile(Message):
    """One wanted file follows as DATA (whole from ``offset``, or delta records)."""

    TYPE = "sync_file"
    index: int
    size: int
    offset: int = 0
    delta: bool = False


class SyncCommit(Message):
    """The file being sent is complete (``changed``: torn by a writer; discard it)."""

    TYPE = "sync_commit"
    index: int
    hash: str
    changed: bool = False


class SyncBatch(Message):
    """Several small wanted files, whole, concatenated in the DATA that follows."""

    TYPE = "sync_batch"
    indices: list[int]
    sizes: list[int]
    hashes: list[str]

    def problem(self, request: "Message | None") -> "str | None":
        return batch_problem(len(self.indices), self.sizes, self.hashes)


class SyncSent(Message):
    TYPE = "sync_sent"
    SENDERS = CLIENT


class SyncDeleted(Message):
    """Entries a push's ``delete`` removed (a dry run: would remove) on the server."""

    TYPE = "sync_deleted"
    SENDERS = SERVER
    names: list[str]

    def problem(self, request: "Message | None") -> "str | None":
        too_many = len(self.names) > MAX_LIST
        return f"a sync_deleted lists more than {MAX_LIST} names" if too_many else None


SYNC_MESSAGES: "tuple[type[Message], ...]" = (
    Sync, SyncList, SyncListed, SyncWant, SyncFile, SyncCommit, SyncBatch, SyncSent, SyncDeleted,
)
REGISTRY.update({cls.TYPE: cls for cls in SYNC_MESSAGES})
