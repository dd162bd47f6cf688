"""Hostile peers of a sync. A fake server (built from the sans-I/O core over real TLS) answers a
pull with crafted file lists: the client refuses every name that would leave DEST and writes
nothing there, and ``--delete`` never reaches outside DEST. A client sending crafted lists to a
real server over the real API: unsafe names, entries beneath files, duplicates, links out of a
confined root, more entries than the cap, content nobody asked for — each ends that one stream
with a clear error, nothing is written outside the root, and the server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tether
from tether.errors import RemoteProtocolError, TetherError, UnsafePath
from tether.protocol import CLOSED, NEED_DATA, Connection, Done, Hello, Message, Role, Welcome
from tether.protocol.sync_messages import (
    Sync,
    SyncBatch,
    SyncFile,
    SyncList,
    SyncListed,
)
from tether.storage.source import file_hash
from tether.tls import server_context

from .conftest import RigFactory
from .helpers import HOST, ClientSpec, Identities, Rig, listing, make_file

Script = Callable[[Sync], list[Message | tuple[int, bytes]]]


def entries(stream: int, *items: tuple[str, str, str]) -> SyncList:
    """A sync_list of (name, kind, target) items: files of 7 bytes."""
    return SyncList(names=[n for n, _, _ in items], kinds=[k for _, k, _ in items],
                    sizes=[7 if k == "file" else 0 for _, k, _ in items],
                    modes=[0o755 if k == "dir" else 0o644 for _, k, _ in items],
                    mtimes=[1] * len(items), targets=[t for _, _, t in items],
                    hashes=[""] * len(items), stream=stream)


def pull_script(*items: tuple[str, str, str], extra: list[Message | tuple[int, bytes]] | None
                = None) -> Script:
    def script(req: Sync) -> list[Message | tuple[int, bytes]]:
        out: list[Message | tuple[int, bytes]] = []
        if items:
            out.append(entries(req.stream, *items))
        out.append(SyncListed(count=len(items), stream=req.stream))
        out += extra or []
        out.append(Done(path="", stream=req.stream))
        return out

    return script


@dataclass
class FakeServer:
    ids: Identities
    script: Script
    requests: list[Sync] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0
    tls: bool = True

    async def start(self) -> None:
        ctx = server_context(self.ids.server, [self.ids.client.cert_der]) if self.tls else None
        self.server = await asyncio.start_server(self._serve, HOST, 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = Connection(Role.SERVER)

        async def next_event() -> object:
            while True:
                event = proto.next_event()
                if event is not NEED_DATA:
                    return event
                proto.receive_data(await reader.read(65536))

        try:
            assert isinstance(await next_event(), Hello)
            writer.write(proto.send(Welcome(version=1, server_name="evil",
                                            permissions=["get", "put"])))
            while (event := await next_event()) is not CLOSED:
                if isinstance(event, Sync):
                    self.requests.append(event)
                    for item in self.script(event):
                        writer.write(proto.send_data(item[0], 0, item[1])
                                     if isinstance(item, tuple) else proto.send(item))
                    await writer.drain()
        except (ConnectionError, TetherError, AssertionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def fake(ids: Identities) -> AsyncIterator[Callable[[Script], Awaitable[FakeServer]]]:
    started: list[FakeServer] = []

    async def start(script: Script, tls: bool = True) -> FakeServer:
        server = FakeServer(ids, script, tls=tls)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.server is not None:
            server.server.close()


async def pull(server: FakeServer, ids: Identities, dest: Path, **kw: object) -> object:
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True,
                              plaintext=not server.tls) as conn:
        return await conn.sync("tree/", dest, pull=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("items, match", [
    ([("../evil", "file", "")], "unsafe name"),
    ([("a/../../evil", "file", "")], "unsafe name"),
    ([("/etc/evil", "file", "")], "unsafe name"),
    ([("a\\..\\evil", "file", "")], "unsafe name"),
    ([("", "file", "")], "unsafe name"),
    ([("x", "file", ""), ("x", "file", "")], "twice"),
    ([("f", "file", ""), ("f/evil", "file", "")], "beneath something that is not a directory"),
    ([("l", "symlink", "."), ("l/evil", "file", "")], "beneath something"),
    ([("l", "symlink", "/etc")], "leaves the tree"),
    ([("d", "dir", ""), ("d/l", "symlink", "../../etc")], "leaves the tree"),
    ([(".x.tether-part", "file", "")], "unsafe name"),
    ([("d", "device", "")], "unsafe name|as a"),
])
async def test_a_hostile_listing_is_refused_and_nothing_leaves_dest(
        fake: Callable[[Script], Awaitable[FakeServer]], ids: Identities, work: Path,
        items: list[tuple[str, str, str]], match: str) -> None:
    server = await fake(pull_script(*items))
    dest = work / "box" / "dest"
    dest.parent.mkdir()
    with pytest.raises(UnsafePath, match=match):
        await pull(server, ids, dest)
    # what was made before the refusal is inside DEST (a directory, an inward link), no file
    assert set(listing(work / "box")) <= {"dest", "dest/d", "dest/l", "dest/x"}
    assert not any(p.is_file() for p in (work / "box").rglob("*"))
    assert not (work / "evil").exists() and not (work / "box" / "evil").exists()


async def test_safe_links_skips_a_link_out(fake: Callable[[Script], Awaitable[FakeServer]],
                                           ids: Identities, work: Path) -> None:
    server = await fake(pull_script(("l", "symlink", "/etc"), ("m", "symlink", "inside")))
    result = await pull(server, ids, work / "dest", safe_links=True)
    assert [(e.path, e.action) for e in result.entries] == [  # type: ignore[attr-defined]
        ("l", "skip"), ("m", "symlink")]
    assert listing(work / "dest") == ["m"]


async def test_content_nobody_asked_for_is_refused(
        fake: Callable[[Script], Awaitable[FakeServer]], ids: Identities, work: Path) -> None:
    body = b"payload"
    server = await fake(lambda req: [
        entries(req.stream, ("a", "file", "")),
        SyncListed(count=1, stream=req.stream),
        SyncBatch(indices=[5], sizes=[7], hashes=[file_hash(body)], stream=req.stream),
        (req.stream, body), Done(path="", stream=req.stream)])
    with pytest.raises(RemoteProtocolError, match="does not belong in a sync_batch"):
        await pull(server, ids, work / "dest")
    assert listing(work / "dest") == []


@pytest.mark.parametrize("tls, hash_, stored", [
    (True, "", True), (True, file_hash(b"tampere"), False),
    (False, "", False), (False, file_hash(b"tampere"), False),
])
async def test_a_batch_is_checked_where_tls_does_not_carry_it(
        fake: Callable[..., Awaitable[FakeServer]], ids: Identities, work: Path,
        tls: bool, hash_: str, stored: bool) -> None:
    """Over TLS a batch's file may come without a hash (the channel vouches for its bytes);
    a hash that is given is checked, and over --plaintext every file must match its hash:
    one that does not is refused and nothing is stored."""
    body = b"payload"

    def script(req: Sync) -> list[Message | tuple[int, bytes]]:
        return [entries(req.stream, ("a", "file", "")), SyncListed(count=1, stream=req.stream),
                SyncBatch(indices=[0], sizes=[7], hashes=[hash_], stream=req.stream),
                (req.stream, body), Done(path="", stream=req.stream)]

    server = await fake(script, tls=tls)
    if stored:
        await pull(server, ids, work / "dest")
        assert (work / "dest" / "a").read_bytes() == body
        return
    with pytest.raises(RemoteProtocolError, match="does not match the sender's hash"):
        await pull(server, ids, work / "dest")
    assert listing(work / "dest") == []


async def test_a_single_pulled_file_is_named_by_the_user(
        fake: Callable[[Script], Awaitable[FakeServer]], ids: Identities, work: Path) -> None:
    """A one-file pull stores under the name the user gave, whatever the server lists."""
    server = await fake(pull_script(("evil-name", "file", "")))
    (work / "dir").mkdir()
    async with tether.connect(HOST, server.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(RemoteProtocolError, match="did not send 1 of the files"):
            await conn.sync("mine.txt", work / "dir", pull=True)
    assert listing(work / "dir") == []  # nothing stored, and never as "evil-name"


async def test_delete_in_a_pull_stays_inside_dest(
        fake: Callable[[Script], Awaitable[FakeServer]], ids: Identities, work: Path) -> None:
    outside = make_file(work / "outside" / "keep.txt", 5)
    dest = work / "dest"
    make_file(dest / "gone.txt", 5)
    (dest / "link-out").symlink_to(work / "outside")
    server = await fake(pull_script())  # an empty tree: --delete empties DEST, nothing else
    result = await pull(server, ids, dest, delete=True)
    assert result.deleted == 2  # type: ignore[attr-defined]
    assert listing(dest) == [] and outside.read_bytes()
    assert listing(work / "outside") == ["keep.txt"]


# --- a hostile client, a real server --------------------------------------------------------


async def push_raw(conn: tether.Connection, path: str, *lists: SyncList,
                   then: list[Message] | None = None) -> TetherError:
    """Open a push and send crafted lists; the error the server ends the stream with."""
    handle = conn.open_stream(Sync, path=path)
    for msg in lists:
        handle.send(SyncList(**{f.name: getattr(msg, f.name) for f in msg.FIELDS
                                if f.name != "stream"}, stream=handle.stream))
    handle.send(SyncListed(count=sum(len(m.names) for m in lists), stream=handle.stream))
    for msg in then or []:
        handle.send(msg)
    with pytest.raises(TetherError) as exc:
        while True:
            await handle.next()
    return exc.value


@pytest.mark.parametrize("items, code", [
    ([("../evil", "file", "")], "unsafe_path"),
    ([("a/../../evil", "file", "")], "unsafe_path"),
    ([("f", "file", ""), ("f/evil", "file", "")], "unsafe_path"),
    ([("d", "dir", ""), ("d", "dir", "")], "unsafe_path"),
    ([("l", "symlink", "."), ("l/x", "dir", "")], "unsafe_path"),
])
async def test_crafted_lists_end_only_their_stream(api: tether.Connection, rig: Rig,
                                                   items: list[tuple[str, str, str]],
                                                   code: str) -> None:
    error = await push_raw(api, "dest", entries(1, *items))
    assert error.code == code
    assert not (rig.root.parent / "evil").exists() and not (rig.root / "evil").exists()
    assert (await api.run("echo still here")).text == "still here\n"


async def test_a_confined_client_cannot_link_or_sync_out(make_rig: RigFactory,
                                                         work: Path) -> None:
    root = work / "jail"
    rig = await make_rig(root=work / "srvroot", clients=[ClientSpec("jailed", str(root))])
    root.mkdir()
    home = work / "client-jailed"
    async with rig.connect(home) as conn:
        error = await push_raw(conn, "dest", entries(1, ("l", "symlink", "../../etc")))
        assert error.code == "unsafe_path" and "leaves the tree" in str(error)
        src = work / "src"
        make_file(src / "f", 3)
        with pytest.raises(UnsafePath):
            await conn.sync(f"{src}/", "../escape")
        result = await conn.sync(f"{src}/", "ok", safe_links=True)
        assert result.sent == 1 and (root / "ok" / "f").exists()
    assert not (work / "escape").exists()
    assert sorted(os.listdir(root)) == ["dest", "ok"]


async def test_more_entries_than_the_cap_are_refused(api: tether.Connection, rig: Rig,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tether.syncing.dest.MAX_ENTRIES", 300)
    lists = [entries(1, *[(f"f{i}_{j}", "file", "") for j in range(200)]) for i in range(2)]
    error = await push_raw(api, "dest", *lists)
    assert error.code == "bad_request" and "more than 300 entries" in str(error)


async def test_a_file_sent_unasked_is_refused(api: tether.Connection,
                                                             rig: Rig) -> None:
    error = await push_raw(api, "dest", entries(1, ("a", "file", "")),
                           then=[SyncFile(index=7, size=3, stream=1)])
    assert "not asked for" in str(error)
    with contextlib.suppress(FileNotFoundError):
        assert listing(rig.root / "dest") == []
    assert (await api.run("echo ok")).text == "ok\n"


async def test_the_servers_own_files_are_out_of_a_syncs_reach(make_rig: RigFactory,
                                                             work: Path) -> None:
    """A server whose home lies inside its root: a push into it is refused, a pull of the root
    neither lists nor reads it, and --delete at the root leaves it alone."""
    rig = await make_rig(root=work)  # its home, work/server-home0, is below the root
    home = rig.home
    before = sorted(p.name for p in home.iterdir())
    src = work / "src"
    make_file(src / "authorized", 5)
    async with rig.connect() as conn:
        with pytest.raises(TetherError, match="server's own files"):
            await conn.sync(f"{src}/", home.name)
        pulled = await conn.sync("./", str(work / "copy-of-root"), pull=True,
                                 exclude=["copy-of-root", "client-*", "src"])
        assert not any(e.path.startswith(home.name) for e in pulled.entries)
        assert not (work / "copy-of-root" / home.name).exists()
        empty = work / "empty"
        empty.mkdir()
        await conn.sync(f"{empty}/", ".", delete=True, exclude=["copy-of-root", "empty"],
                        dry_run=True)
        result = await conn.sync(f"{empty}/", ".", delete=True,
                                 exclude=["copy-of-root", "empty"])
        assert home.name not in [e.path for e in result.entries]
    # the server's own hash cache (storage/hashcache.py) may appear there; nothing else
    assert sorted(p.name for p in home.iterdir() if p.name != "cache") == before
