"""A hostile server cannot grow the client without bound (issue 13, client item 14).

The server is a real TLS 1.3 server on loopback driving the sans-I/O core by hand: it lists a
tree without end, floods a stream the application does not read with listing entries, or sends
a command's whole flow-control window as one million 4-byte DATA frames. The client's memory is
measured (psutil RSS of this process; ``ru_maxrss`` of a ``tether get -r`` subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

import tether
from support import TETHER
from tether.client.transfer_base import MAX_LISTING_ENTRIES
from tether.errors import RemoteError
from tether.protocol import (
    INITIAL_WINDOW,
    NEED_DATA,
    Connection,
    Entries,
    Exec,
    Hello,
    List,
    Role,
    Started,
    Welcome,
)
from tether.tls import server_context

from .helpers import HOST, Identities, cli_env, listing

MiB = 1 << 20
BATCH = 256  # entries per `entries` message, as the reference server sends them

class Flood:
    """Answers ``list`` with endless ``entries`` (never ``done``) and ``exec`` with ``started``
    and INITIAL_WINDOW bytes of output in 4-byte DATA frames, then nothing; counts what it
    managed to send (the socket's writes wait for the client to take them)."""

    def __init__(self, ids: Identities) -> None:
        self.ids = ids
        self.server: asyncio.Server | None = None
        self.port = 0
        self.sent = 0
        self.window_sent = asyncio.Event()

    async def start(self) -> None:
        ctx = server_context(self.ids.server, [self.ids.client.cert_der])
        self.server = await asyncio.start_server(self._serve, HOST, 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = Connection(Role.SERVER)
        try:
            while (event := proto.next_event()) is NEED_DATA:
                proto.receive_data(await reader.read(65536))
            assert isinstance(event, Hello)
            writer.write(proto.send(Welcome(version=1, software="flood/0", server_name="flood",
                                            platform="linux", permissions=["exec", "get"])))
            while (event := proto.next_event()) is NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                proto.receive_data(data)
            if isinstance(event, List):
                await self._entries(proto, event, reader, writer)
                return
            if isinstance(event, Exec):
                await self._tiny_frames(proto, event, writer)
            await reader.read()  # until the client goes
        except (ConnectionError, AssertionError):
            pass
        finally:
            writer.close()

    async def _entries(self, proto: Connection, req: List, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        """The same message again and again (the client checks names only once the listing
        is done): the server spends nothing, so only the client sets the pace. Until the
        client goes: what it sends is read meanwhile, for its end. (Unread, asyncio's TLS
        transport takes the client's goodbye, then drops every write without a word and
        ``drain`` no longer waits: this loop spun without end, counting bytes never sent.)"""
        names = [f"d{i // 16}/{'x' * 180}{i}" for i in range(BATCH)]
        frame = proto.send(Entries(
            names=names, kinds=["file"] * BATCH, sizes=[1] * BATCH, modes=[0o644] * BATCH,
            mtimes=[0] * BATCH, targets=[None] * BATCH, stream=req.stream))
        gone = asyncio.create_task(reader.read())  # b"" or the error once the client goes
        try:
            while not gone.done() and not writer.is_closing():
                writer.write(frame)
                await writer.drain()
                self.sent += len(frame)
                await asyncio.sleep(0)  # let the read see the end
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await gone

    async def _tiny_frames(self, proto: Connection, req: Exec,
                           writer: asyncio.StreamWriter) -> None:
        writer.write(proto.send(Started(pid=1, stream=req.stream)))
        frame = proto.data_prefix(req.stream, 1, 4) + b"abcd"  # every one alike
        per_write = 65536
        for _ in range(INITIAL_WINDOW // 4 // per_write):
            writer.write(frame * per_write)
            await writer.drain()
            self.sent += len(frame) * per_write
        self.window_sent.set()


@pytest.fixture
async def flood(ids: Identities) -> AsyncIterator[Flood]:
    server = Flood(ids)
    await server.start()
    yield server
    assert server.server is not None
    server.server.close()


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def test_an_unread_stream_holds_the_server_back(flood: Flood, ids: Identities) -> None:
    """The application opened a listing and does not read it: after a bounded number of
    waiting messages the connection stops reading, so the server's writes stop too (without
    the bound the client takes in, and holds, everything the server sends)."""
    async with tether.connect(HOST, flood.port, home=ids.client_home, accept_new=True) as conn:
        before = rss()
        handle = conn.open_stream(List, path="tree", batched=True)
        sent, still_since = -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() - still_since < 2 and flood.sent < 64 * MiB:
            assert time.monotonic() < deadline, f"still sending: {flood.sent / MiB:.0f} MiB"
            if flood.sent != sent:
                sent, still_since = flood.sent, time.monotonic()
            await asyncio.sleep(0.2)
        grown, sent = rss() - before, flood.sent
        handle.abandon()
    assert 0 < sent < 32 * MiB, f"the server got {sent / MiB:.0f} MiB into an unread stream"
    assert grown < 48 * MiB, f"the client grew by {grown / MiB:.0f} MiB"


async def test_tiny_frames_cost_no_more_than_the_window(flood: Flood, ids: Identities) -> None:
    """A million 4-byte DATA frames are held as the 4 MiB they carry, and arrive whole."""
    async with tether.connect(HOST, flood.port, home=ids.client_home, accept_new=True) as conn:
        before = rss()
        proc = await conn.start("cat")
        await asyncio.wait_for(flood.window_sent.wait(), 60)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1:  # the client took every frame off the socket
            await asyncio.sleep(0.05)
            if conn._framed.proto.buffered or conn._framed.proto.queued:
                idle_since = time.monotonic()
        grown = rss() - before
        out = bytearray()
        async for channel, chunk in proc:
            assert channel == 1
            out += chunk
            if len(out) == INITIAL_WINDOW:
                break
        proc.abandon()
    assert out == b"abcd" * (INITIAL_WINDOW // 4)
    assert grown < 48 * MiB, f"the client grew by {grown / MiB:.0f} MiB for 4 MiB of output"


async def test_an_endless_listing_is_cut_at_the_cap(flood: Flood, ids: Identities,
                                                    work: Path) -> None:
    """``tether get -r`` from a server that never ends its listing: a clear error at the cap,
    nothing written, and the client's peak memory within the documented budget."""
    started = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.Popen, [*TETHER, "get", "-p", str(flood.port), "--accept-new", "-r",
                           f"{HOST}:tree", str(work / "copy")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=cli_env(ids.client_home))
    _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 1, stderr
    assert stderr.splitlines() == [
        f"tether: the listing of 'tree' passed {MAX_LISTING_ENTRIES:,} entries or 256 MiB of "
        f"names, tether's cap for one listing; nothing written (copy the tree in parts)"]
    assert listing(work) == []
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    assert peak < 768 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    assert flood.sent < 512 * MiB
    assert time.monotonic() - started < 120


async def test_the_api_raises_a_remote_error(flood: Flood, ids: Identities, work: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.client import listing as listing_module

    monkeypatch.setattr(listing_module, "MAX_LISTING_ENTRIES", 5_000)
    async with tether.connect(HOST, flood.port, home=ids.client_home, accept_new=True) as conn:
        with pytest.raises(RemoteError, match="passed 5,000 entries"):
            await conn.get("tree", work / "copy", recursive=True)
    assert listing(work) == []
