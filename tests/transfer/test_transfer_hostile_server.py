"""Client-side safety against a hostile server (the CVE-2019-6111 / CVE-2018-20685 class).

The server here is built from the sans-I/O core alone: an asyncio TLS 1.3 server (the real
``tether.tls.server_context``, the client's certificate authorized) that drives a
``tether.protocol.Connection(Role.SERVER)`` by hand, answers ``hello`` with ``welcome`` and then
answers each request with whatever the test scripted: a crafted listing for ``list``, or crafted
meta/data/done for ``get``. The client must refuse every name it did not choose and write nothing
under LOCAL; a lie about the data must never reach the final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tether
from tether.errors import (
    IntegrityError,
    RemoteProtocolError,
    SourceChanged,
    TetherError,
    UnsafePath,
)
from tether.protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Done,
    Entries,
    Entry,
    Fetch,
    Files,
    Get,
    Hello,
    List,
    Message,
    Meta,
    Role,
    Welcome,
)
from tether.storage.source import digest, new_hasher
from tether.tls import server_context

from .helpers import HOST, Identities, listing

Script = Callable[[Message], list[Message | tuple[int, bytes]]]
Starter = Callable[[Script], Awaitable["HostileServer"]]


@dataclass
class HostileServer:
    """Answers every stream-opening request with the messages ``script`` returns for it (a
    ``(stream, bytes)`` tuple is sent as DATA)."""

    ids: Identities
    script: Script
    requests: list[Message] = field(default_factory=list)
    close_after_script: bool = False  # end the connection once the first answer is sent
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        ctx = server_context(self.ids.server, [self.ids.client.cert_der])
        self.server = await asyncio.start_server(self._serve, HOST, 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = Connection(Role.SERVER)

        async def next_event() -> object:
            while True:
                event = proto.next_event()
                if event is not NEED_DATA:
                    return event
                proto.receive_data(await reader.read(65536))

        try:
            hello = await next_event()
            assert isinstance(hello, Hello)
            writer.write(proto.send(Welcome(version=1, software="hostile/0", server_name="evil",
                                            platform="linux", permissions=["get", "put"])))
            while True:
                event = await next_event()
                if event is CLOSED:
                    return
                if isinstance(event, List | Get | Fetch):
                    self.requests.append(event)
                    for item in self.script(event):
                        if isinstance(item, tuple):
                            stream, body = item
                            writer.write(proto.send_data(stream, 0, body))
                        else:
                            writer.write(proto.send(item))
                    await writer.drain()
                    if self.close_after_script and not isinstance(event, List):
                        return
        except (ConnectionError, TetherError, AssertionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hostile(ids: Identities) -> AsyncIterator[Starter]:
    started: list[HostileServer] = []

    async def start(script: Script) -> HostileServer:
        server = HostileServer(ids, script)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def listing_script(entries: list[dict[str, object]]) -> Script:
    """A ``list`` answered with the given entries (a proper root directory first), then done."""

    def answer(req: Message) -> list[Message | tuple[int, bytes]]:
        out: list[Message | tuple[int, bytes]] = [Entry(parts=[], kind="dir", mode=0o755,
                                                        stream=req.stream)]
        out += [Entry(stream=req.stream, **e) for e in entries]  # type: ignore[arg-type]
        out.append(Done(path="tree", count=len(out), stream=req.stream))
        return out

    def script(req: Message) -> list[Message | tuple[int, bytes]]:
        if isinstance(req, List):
            return answer(req)
        body = b"payload"
        hasher = new_hasher()
        hasher.update(body)
        if isinstance(req, Fetch):
            n = len(req.names)
            return [Files(sizes=[len(body)] * n, modes=[0o644] * n, mtimes=[0] * n,
                          hashes=[digest(hasher)] * n, stream=req.stream),
                    (req.stream, body * n),
                    Done(path="x", size=n * len(body), count=n, stream=req.stream)]
        return [Meta(size=len(body), mode=0o644, mtime_ns=0, stream=req.stream),
                (req.stream, body),
                Done(path="x", size=len(body), hash=digest(hasher), stream=req.stream)]

    return script


def f(*parts: str) -> dict[str, object]:
    return {"parts": list(parts), "kind": "file", "size": 7}


def d(*parts: str) -> dict[str, object]:
    return {"parts": list(parts), "kind": "dir", "mode": 0o755}


def link(target: str, *parts: str) -> dict[str, object]:
    return {"parts": list(parts), "kind": "symlink", "target": target}


BAD_LISTINGS = {
    "empty name": [f("")],
    "dot": [f(".")],
    "dotdot": [f("..")],
    "dotdot deeper": [d("a"), f("a", "..")],
    "slash in a name": [f("a/b")],
    "absolute": [f("/abs")],
    "absolute etc": [f("/etc/passwd")],
    "nul": [f("x\0y")],
    "backslash": [f("a\\b")],
    "backslash dotdot": [f("..\\..\\evil")],
    "symlink to /etc then a file beneath": [link("/etc", "l"), f("l", "passwd")],
    "symlink to ../../x then a file beneath": [link("../../x", "l"), f("l", "f")],
    "nested symlink up and out": [d("a"), link("../../..", "a", "up"), f("a", "up", "f")],
    "nul in a symlink target": [link("a\0b", "l")],
    "in-tree symlink then a file beneath": [d("sub"), link("sub", "l"), f("l", "f")],
    "symlink to . then a file beneath": [link(".", "l"), f("l", "l", "f")],
    "file beneath a file": [f("a"), f("a", "b")],
    "file beneath an unlisted directory": [f("ghost", "f")],
    "a directory listed again as a symlink": [d("a"), link(".", "a"), f("a", "f")],
}


# Symlinks that lead out of the tree, with nothing listed beneath them: stored as symlinks, like
# scp and rsync do (issue 14 item 14); no write ever goes through one. ``--safe-links`` skips them.
LINKS_OUT = {
    "symlink up and out alone": ([link("..", "l")], ["l"]),
    "a symlink through an in-tree link that climbs out": (
        [d("a"), d("a", "b"), link("../..", "a", "b", "up"), link("a/b/up/../../etc", "esc")],
        ["esc"]),  # a/b/up -> ../.. itself stays in the tree
    "dotdot after a name in a symlink": ([d("a"), link("a/../../x", "l")], ["l"]),
    "absolute symlink alone": ([link("/tmp", "l")], ["l"]),
    "absolute symlink to /etc": ([link("/etc", "etc")], ["etc"]),
}


@pytest.mark.parametrize("safe_links", [False, True], ids=["kept", "safe-links"])
@pytest.mark.parametrize(("entries", "out"), list(LINKS_OUT.values()), ids=list(LINKS_OUT))
async def test_recursive_get_stores_symlinks_that_leave_the_tree(
        hostile: Starter, ids: Identities, work: Path, entries: list[dict[str, object]],
        out: list[str], safe_links: bool) -> None:
    server = await hostile(listing_script([f("harmless first"), *entries]))
    (work / "outside").mkdir()
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        result = await conn.get("tree", work / "copy", recursive=True, safe_links=safe_links)
    copy = work / "copy"
    assert (copy / "harmless first").read_bytes() == b"payload"
    links = {"/".join(e["parts"]): e["target"] for e in entries  # type: ignore[arg-type]
             if e["kind"] == "symlink"}
    for name in out:
        if safe_links:
            assert not os.path.lexists(copy / name)
        else:
            assert os.readlink(copy / name) == links[name]
    skipped = {s.path: s.target for s in result.skipped}
    assert skipped == ({f"tree/{name}": links[name] for name in out} if safe_links else {})
    assert listing(work / "outside") == []
    assert sorted(p.name for p in work.iterdir()) == ["copy", "outside"]


async def test_a_second_get_never_writes_through_a_stored_link(
        hostile: Starter, ids: Identities, work: Path) -> None:
    """A first get stored ``l -> OUTSIDE``; a second listing names ``l`` a directory with a
    file in it: the write must not go through the stored link."""
    outside = work / "outside"
    outside.mkdir()
    first = await hostile(listing_script([link(str(outside), "l")]))
    async with tether.connect(HOST, first.port, home=ids.client_home, accept_new=True) as conn:
        await conn.get("tree", work / "copy", recursive=True)
    assert os.readlink(work / "copy" / "l") == str(outside)
    second = await hostile(listing_script([d("l"), f("l", "planted")]))
    async with tether.connect(HOST, second.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(TetherError):  # lands in work/copy again, the name being "copy"
            await conn.get("copy", work, recursive=True, force=True)
    assert listing(outside) == []
    assert os.readlink(work / "copy" / "l") == str(outside)


@pytest.mark.parametrize("entries", list(BAD_LISTINGS.values()), ids=list(BAD_LISTINGS))
async def test_recursive_get_refuses_a_hostile_listing(
        hostile: Starter, ids: Identities, work: Path,
        entries: list[dict[str, object]]) -> None:
    server = await hostile(listing_script([f("harmless first"), *entries]))
    local = work / "LOCAL"
    local.mkdir()
    (work / "outside").mkdir()
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(UnsafePath):
            await conn.get("tree", local, recursive=True)
        with pytest.raises(UnsafePath):
            await conn.get("tree", work / "new name", recursive=True)
    assert listing(local) == []  # nothing at all: the listing is checked before any write
    assert not (work / "new name").exists()
    assert listing(work / "outside") == []
    assert sorted(p.name for p in work.iterdir()) == ["LOCAL", "outside"]
    assert all(isinstance(r, List) for r in server.requests)  # no file was even requested


async def test_a_sane_listing_from_the_same_server_works(
        hostile: Starter, ids: Identities,
        work: Path) -> None:
    """The control: the hand-made server is good enough to transfer a real tree."""
    server = await hostile(listing_script([
        d("sub"), f("sub", "x"), link("sub/x", "l"), link("../x", "sub", "up"), f("x")]))
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        await conn.get("tree", work / "copy", recursive=True)
    assert listing(work / "copy") == ["l", "sub", "sub/up", "sub/x", "x"]
    assert (work / "copy" / "sub" / "x").read_bytes() == b"payload"


def lying_get(kind: str) -> Script:
    """A get answered with data that does not match what the server claims."""

    def script(req: Message) -> list[Message | tuple[int, bytes]]:
        body = b"A" * 100_000
        hasher = new_hasher()
        hasher.update(body)
        good = digest(hasher)
        s = req.stream
        if kind == "wrong hash":
            return [Meta(size=len(body), mode=0o644, mtime_ns=0, stream=s), (s, body),
                    Done(size=len(body), hash="blake3:" + "0" * 64, stream=s)]
        if kind == "flipped byte":
            bad = b"A" * 50_000 + b"B" + b"A" * 49_999
            return [Meta(size=len(body), mode=0o644, mtime_ns=0, stream=s), (s, bad),
                    Done(size=len(body), hash=good, stream=s)]
        if kind == "short":
            return [Meta(size=len(body), mode=0o644, mtime_ns=0, stream=s), (s, body[:10]),
                    Done(size=len(body), hash=good, stream=s)]
        if kind == "long":
            return [Meta(size=10, mode=0o644, mtime_ns=0, stream=s), (s, body),
                    Done(size=10, hash=good, stream=s)]
        raise AssertionError(kind)

    return script


@pytest.mark.parametrize(("kind", "error"), [
    ("wrong hash", IntegrityError), ("flipped byte", IntegrityError),
    ("short", SourceChanged), ("long", SourceChanged),
])
async def test_get_never_stores_data_that_does_not_verify(
        hostile: Starter, ids: Identities,
        work: Path, kind: str, error: type[Exception]) -> None:
    server = await hostile(lying_get(kind))
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(error):
            await conn.get("file.bin", work / "file.bin")
    assert not (work / "file.bin").exists()  # the final name never holds a corrupt file


async def test_a_single_file_get_takes_its_name_from_the_user(
        hostile: Starter, ids: Identities,
        work: Path) -> None:
    """Whatever the server says in done/meta, the file lands under the name the user gave."""

    def script(req: Message) -> list[Message | tuple[int, bytes]]:
        hasher = new_hasher()
        hasher.update(b"hi")
        return [Meta(size=2, mode=0o4777, mtime_ns=0, stream=req.stream),
                (req.stream, b"hi"),
                Done(path="../../etc/evil", size=2, hash=digest(hasher), stream=req.stream)]

    server = await hostile(script)
    (work / "LOCAL").mkdir()
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        await conn.get("../../etc/passwd", work / "LOCAL")
    assert listing(work / "LOCAL") == ["passwd"]
    assert (work / "LOCAL" / "passwd").stat().st_mode & 0o7777 == 0o777  # no setuid from afar


# --- batches: a batched listing, and lying or cut answers to fetch ---------------------------


def batched_listing_script(entries: list[dict[str, object]]) -> Script:
    """A ``list`` answered with one ``entries`` message (the root directory first)."""

    def script(req: Message) -> list[Message | tuple[int, bytes]]:
        assert isinstance(req, List) and req.batched
        rows = [{"parts": [], "kind": "dir", "mode": 0o755}, *entries]
        return [Entries(names=["/".join(r["parts"]) for r in rows],  # type: ignore[arg-type]
                        kinds=[str(r["kind"]) for r in rows],
                        sizes=[int(r.get("size", 0)) for r in rows],  # type: ignore[call-overload]
                        modes=[int(r.get("mode", 0o644)) for r in rows],  # type: ignore[call-overload]
                        mtimes=[0] * len(rows),
                        targets=[r.get("target") for r in rows],  # type: ignore[misc]
                        stream=req.stream),
                Done(path="tree", count=len(rows), stream=req.stream)]

    return script


JOINED_BAD = {k: v for k, v in BAD_LISTINGS.items()  # a "/" inside a component cannot be said
              if not any("/" in p for e in v for p in e["parts"])}  # type: ignore[attr-defined]


@pytest.mark.parametrize("entries", list(JOINED_BAD.values()), ids=list(JOINED_BAD))
async def test_a_hostile_batched_listing_is_refused_before_any_write(
        hostile: Starter, ids: Identities, work: Path,
        entries: list[dict[str, object]]) -> None:
    server = await hostile(batched_listing_script([f("harmless first"), *entries]))
    (work / "LOCAL").mkdir()
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(UnsafePath):
            await conn.get("tree", work / "LOCAL", recursive=True)
    assert listing(work / "LOCAL") == []
    assert sorted(p.name for p in work.iterdir()) == ["LOCAL"]
    assert all(isinstance(r, List) for r in server.requests)  # no file was even requested


GOOD = [b"first file", b"second file", b"third file"]


def lying_fetch(kind: str) -> Script:
    """A tree of three small files, whose fetch is answered wrongly in the way ``kind`` says."""
    rows = [f(f"f{i}") for i in range(3)]
    listing_answer = batched_listing_script(rows)

    def script(req: Message) -> list[Message | tuple[int, bytes]]:
        if isinstance(req, List):
            return listing_answer(req)
        assert isinstance(req, Fetch) and req.names == ["f0", "f1", "f2"]
        s, datas = req.stream, list(GOOD)
        hashes = [digest(_hashed(d)) for d in datas]
        sizes = [len(d) for d in datas]
        body = b"".join(datas)
        if kind == "flipped byte":
            body = body[:15] + b"X" + body[16:]  # inside f1
        elif kind == "too few files":
            sizes, hashes = sizes[:2], hashes[:2]
        elif kind == "over the cap":
            sizes = [5 * 1024 * 1024, 0, 0]
        elif kind == "more data":
            body += b"extra"
        elif kind == "less data":
            body = body[:-3]
        n = len(sizes)
        files = Files(sizes=sizes, modes=[0o644] * n, mtimes=[0] * n, hashes=hashes, stream=s)
        return [files, (s, body), Done(path="tree", count=n, stream=s)]

    return script


def _hashed(data: bytes) -> object:
    hasher = new_hasher()
    hasher.update(data)
    return hasher


@pytest.mark.parametrize(("kind", "error", "stored"), [
    ("flipped byte", IntegrityError, ["f0", "f2"]),
    ("too few files", RemoteProtocolError, []),
    ("over the cap", RemoteProtocolError, []),
    ("more data", SourceChanged, []),  # the frame is refused whole
    ("less data", SourceChanged, ["f0", "f1"]),
])
async def test_a_lying_fetch_answer_never_stores_what_does_not_verify(
        hostile: Starter, ids: Identities, work: Path, kind: str, error: type[Exception],
        stored: list[str]) -> None:
    server = await hostile(lying_fetch(kind))
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(error):
            await conn.get("tree", work / "copy", recursive=True)
    assert listing(work / "copy") == stored  # no partials, and only whole, verified files
    for name in stored:
        assert (work / "copy" / name).read_bytes() == GOOD[int(name[1])]


async def test_a_fetch_cut_mid_batch_stores_only_whole_files(
        hostile: Starter, ids: Identities, work: Path) -> None:
    rows = [f(f"f{i}") for i in range(3)]

    def script(req: Message) -> list[Message | tuple[int, bytes]]:
        if isinstance(req, List):
            return batched_listing_script(rows)(req)
        n, s = 3, req.stream
        return [Files(sizes=[len(d) for d in GOOD], modes=[0o644] * n, mtimes=[0] * n,
                      hashes=[digest(_hashed(d)) for d in GOOD], stream=s),
                (s, b"".join(GOOD)[:16])]  # f0 and part of f1, then the connection ends

    server = await hostile(script)
    server.close_after_script = True
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(TetherError):
            await conn.get("tree", work / "copy", recursive=True)
    assert listing(work / "copy") == ["f0"]
    assert (work / "copy" / "f0").read_bytes() == GOOD[0]
