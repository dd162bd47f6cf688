"""What put, get and the batches of small files share (so that :mod:`tether.client.transfer`
and :mod:`tether.client.batches` import this, not each other): results, options, progress,
and the one step "the next event must be this message".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tether.errors import RemoteProtocolError
from tether.syncing.common import NoProgress

if TYPE_CHECKING:
    from tether.client.process import StreamHandle
    from tether.protocol import Entry, Message

class StreamOpener(Protocol):
    """What a transfer needs of a connection (:class:`tether.client.api.Connection` is one)."""

    def open_stream(self, opener: type[Message], **fields: Any) -> StreamHandle: ...


class Progress(Protocol):
    """What a transfer reports as it goes (the CLI draws it; the API passes it through)."""

    def total(self, files: int, size: int) -> None: ...
    def file_started(self, name: str, size: int, offset: int) -> None: ...
    def advanced(self, name: str, size: int) -> None: ...
    def file_done(self, name: str) -> None: ...


@dataclass(frozen=True)
class FileResult:
    path: str
    kind: str
    size: int = 0
    hash: str = ""
    resumed_from: int = 0


MAX_LISTING_ENTRIES = 1_000_000  # entries one get -r holds before it writes anything
MAX_LISTING_BYTES = 256 << 20  # their names and targets, with 64 bytes counted per component


def listing_cost(entry: Entry) -> int:
    """What an entry of a listing counts against :data:`MAX_LISTING_BYTES` (a component's
    own bytes plus what holding it as a string costs)."""
    return sum(len(part) + 64 for part in entry.parts) + len(entry.target or "")


@dataclass(frozen=True)
class SkippedLink:
    """A symlink ``--safe-links`` left out because it leads out of the tree it is in."""

    path: str
    target: str


@dataclass
class TransferResult:
    """What a put or get did: every entry, the bytes moved, the links skipped (``--safe-links``),
    and how long it took.

    ``entries`` is every entry written (files, directories, symlinks); ``file_count`` counts
    its regular files — the number ``"files"`` means in the CLI's ``--json``.
    ``files`` is the old name of ``entries``, kept so that existing code keeps working.
    """

    entries: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list[SkippedLink] = field(default_factory=list)

    @property
    def files(self) -> list[FileResult]:
        """Deprecated name of :attr:`entries` (every entry, not only files)."""
        return self.entries

    @property
    def file_count(self) -> int:
        """How many regular files were written (``"files"`` in ``--json``)."""
        return sum(1 for f in self.entries if f.kind == "file")

    @property
    def bytes(self) -> int:
        return sum(f.size - f.resumed_from for f in self.entries)

    @property
    def resumed(self) -> list[FileResult]:
        return [f for f in self.entries if f.resumed_from]


@dataclass(frozen=True)
class Options:
    force: bool = False
    rename: bool = False
    resume: bool = True
    progress: Progress = field(default_factory=NoProgress)
    safe_links: bool = False  # skip symlinks that leave the tree (put -r and get -r)


async def _expect(handle: StreamHandle, kind: type) -> object:
    event = await handle.next()
    if not isinstance(event, kind):
        raise RemoteProtocolError(f"expected {kind.__name__}, got {type(event).__name__}")
    return event
