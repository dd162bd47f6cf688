"""A server's listing of a tree (``list``), as ``get -r`` and ``put -r`` into an existing tree
read it: taken whole within a cap (:data:`MAX_LISTING_ENTRIES`, :data:`MAX_LISTING_BYTES`: a
server that lists without end must not grow the client), and checked whole before anything is
written — every name one harmless component, each path once, each entry below a directory
listed before it, so nothing is ever placed beneath a symlink or a file. Symlinks themselves are
kept whatever they point to (``--safe-links`` drops those that leave the tree).
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from tether.client.transfer_base import (
    MAX_LISTING_BYTES,
    MAX_LISTING_ENTRIES,
    SkippedLink,
    StreamOpener,
    TransferResult,
    listing_cost,
)
from tether.errors import RemoteError, UnsafePath
from tether.protocol import Done, Entries, Entry, List
from tether.storage.names import check_name, link_stays_inside

if TYPE_CHECKING:
    from tether.client.process import StreamHandle


def _check_parts(parts: list[str]) -> list[str]:
    """A server-listed path below the requested root: every component one harmless name."""
    for part in parts:
        try:
            check_name(part)
        except UnsafePath as exc:
            raise UnsafePath(f"the server listed an unsafe name {part!r}; nothing written") from exc
    return parts


def _leaves_tree(entry: Entry) -> bool:
    return not link_stays_inside(max(len(entry.parts) - 1, 0), entry.target or "")


def _check_listing(entries: list[Entry]) -> None:
    """A whole listing, before anything is written: every name harmless, each path listed
    once, and each entry's parent a directory listed before it (so nothing is ever placed
    beneath a symlink or a file, whatever the link points to). Symlinks are stored as they
    are, like scp and rsync do: no write ever follows one."""
    kinds: dict[tuple[str, ...], str] = {(): "dir"}
    for i, entry in enumerate(entries):
        if not entry.parts and i:
            raise UnsafePath("the server listed the tree's root again (an empty name); "
                             "nothing written")
        if entry.parts:
            path = tuple(_check_parts(entry.parts))
            shown = "/".join(path)
            if path in kinds:
                raise UnsafePath(f"the server listed {shown!r} twice; nothing written")
            if kinds.get(path[:-1]) != "dir":
                raise UnsafePath(f"the server listed {shown!r} beneath something that is not a "
                                 f"directory it listed; nothing written")
            kinds[path] = entry.kind
        if entry.kind == "symlink" and "\0" in (entry.target or ""):
            raise UnsafePath(f"the server listed a symlink {'/'.join(entry.parts)} with a NUL "
                             f"byte in its target; nothing written")


def _unbatch(msg: Entries) -> list[Entry]:
    """The entries an ``entries`` message lists (its lists agree in length: the protocol
    core checked that as it arrived; names are checked like any others afterwards)."""
    return [Entry(parts=name.split("/") if name else [], kind=kind, size=size, mode=mode,
                  mtime_ns=mtime, target=target, stream=msg.stream)
            for name, kind, size, mode, mtime, target in zip(
                msg.names, msg.kinds, msg.sizes, msg.modes, msg.mtimes, msg.targets,
                strict=True)]


async def _read_listing(listing: StreamHandle, remote: str) -> list[Entry]:
    """The whole listing, within :data:`MAX_LISTING_ENTRIES` entries and
    :data:`MAX_LISTING_BYTES` of names: a server that lists without end (or a tree too big
    to hold) ends the listing with a clear error instead of growing this process."""
    entries: list[Entry] = []
    size = 0
    try:
        while not isinstance(event := await listing.next(), Done):
            if isinstance(event, Entries):
                more = _unbatch(event)
            else:
                assert isinstance(event, Entry)  # the list table allows nothing else
                more = [event]
            entries += more
            size += sum(listing_cost(e) for e in more)
            if len(entries) > MAX_LISTING_ENTRIES or size > MAX_LISTING_BYTES:
                raise RemoteError(
                    f"the listing of {remote!r} passed {MAX_LISTING_ENTRIES:,} entries or "
                    f"{MAX_LISTING_BYTES >> 20} MiB of names, tether's cap for one listing; "
                    f"nothing written (copy the tree in parts)")
    except BaseException:
        listing.abandon()
        raise
    return entries


async def list_tree(conn: StreamOpener, remote: str) -> list[Entry]:
    """The server's listing of ``remote``, every entry, checked before it is used."""
    entries = await _read_listing(conn.open_stream(List, path=remote, batched=True), remote)
    _check_listing(entries)
    if entries and not entries[0].parts and entries[0].kind == "symlink":
        # the root itself is a link: there is no tree to copy, and following it is the
        # server's confinement decision, not the client's (get it without -r)
        raise UnsafePath(f"{remote} is a symlink, not a directory: not followed for a tree; "
                         f"nothing written")
    return entries


def skip_links_out(entries: list[Entry], remote: str,
                       result: TransferResult) -> list[Entry]:
    """``--safe-links``: the listing without the symlinks that lead out of the tree, each one
    recorded in ``result.skipped``."""
    kept = []
    for entry in entries:
        if entry.kind == "symlink" and _leaves_tree(entry):
            result.skipped.append(SkippedLink(posixpath.join(remote, *entry.parts),
                                              entry.target or ""))
        else:
            kept.append(entry)
    return kept


__all__ = ["list_tree", "skip_links_out"]
