"""Terminal injection (issue 13, client item 13): text a peer or a file system supplies is escaped
before it reaches a terminal, through the real ``tether`` console script.

A hostile server is a real TLS 1.3 server on loopback driving the sans-I/O core by hand: its
error messages, the path it says a resumed upload landed at, and (over UDP) a discovery reply's
name and version carry escape sequences (set the window title, erase the line, return the
cursor and print "transfer complete, 0 errors") and line separators. Local file names with
rich markup (``x[`` holding ``]``, ``[link=...]``) are shown as they are, never interpreted.
Every check: no control character reaches stderr/stdout raw, each message stays one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tether.protocol import (
    CLOSED,
    NEED_DATA,
    Begin,
    Commit,
    Connection,
    Data,
    Done,
    Error,
    Hello,
    Message,
    Put,
    Ready,
    Role,
    Welcome,
)
from tether.protocol.discovery import Announcement, decode_probe, encode_reply
from tether.storage.source import digest, new_hasher
from tether.tls import server_context

from .helpers import HOST, Identities, MiB, Rig, arun_cli, make_file

# Set the title, erase the line, carriage return, a fake all-clear, a line separator, a CSI
# introduced by its one-byte C1 form, a bidi override and a bell.
EVIL = ("\x1b]0;owned\x07\x1b[2K\rtransfer complete, 0 errors\u2028next line\x9b31m"
        "\u202eevil\x07")
RAW = ("\x1b", "\x07", "\r", "\u2028", "\x9b", "\u202e")


def assert_clean(text: str, lines: int | None = None) -> None:
    """No control character of EVIL reaches the output raw; ``lines`` lines at most."""
    for char in RAW:
        assert char not in text, (char, text)
    if lines is not None:
        assert len(text.splitlines()) <= lines, text


class EvilServer:
    """Refuses every opener with EVIL as the error text, except a resumable ``put``: that it
    resumes at 1 MiB and reports as stored at a path made of EVIL."""

    def __init__(self, ids: Identities, prefix: bytes) -> None:
        self.ids = ids
        self.prefix = prefix  # the first MiB of the file a put sends (to agree on resuming)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        ctx = server_context(self.ids.server, [self.ids.client.cert_der])
        self.server = await asyncio.start_server(self._serve, HOST, 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = Connection(Role.SERVER)

        async def next_event() -> object:
            while (event := proto.next_event()) is NEED_DATA:
                data = await reader.read(65536)
                proto.receive_data(data)
                if not data:
                    return CLOSED
            writer.write(proto.data_to_send())  # pongs, credit
            return event

        try:
            assert isinstance(await next_event(), Hello)
            writer.write(proto.send(Welcome(version=1, software=EVIL, server_name=EVIL,
                                            platform="linux", permissions=["exec", "put",
                                                                           "get", "shell"])))
            sizes: dict[int, int] = {}
            while (event := await next_event()) is not CLOSED:
                for answer in self._answer(event, sizes):
                    writer.write(proto.send(answer))
                if isinstance(event, Data):
                    proto.consumed(event.stream, len(event.data))
                    writer.write(proto.data_to_send())
                await writer.drain()
        except (ConnectionError, AssertionError):
            pass
        finally:
            writer.close()

    def _answer(self, event: object, sizes: dict[int, int]) -> list[Message]:
        if isinstance(event, Put) and event.resume:
            sizes[event.stream] = event.size
            return [Ready(offset=MiB, prefix_hash=self._prefix_hash(), stream=event.stream)]
        if isinstance(event, Begin | Data):
            return []
        if isinstance(event, Commit):
            return [Done(path=f"/srv/{EVIL}", size=event.size, hash=event.hash,
                         resumed_from=MiB, stream=event.stream)]
        if isinstance(event, Message) and event.OPENS:
            return [Error(code="not_found", message=EVIL, stream=event.stream)]
        return []

    def _prefix_hash(self) -> str:
        hasher = new_hasher()
        hasher.update(self.prefix)
        return digest(hasher)


@pytest.fixture
async def evil(ids: Identities, work: Path) -> AsyncIterator[tuple[EvilServer, Path]]:
    upload = make_file(work / "upload.bin", 2 * MiB, seed=3)
    server = EvilServer(ids, upload.read_bytes()[:MiB])
    await server.start()
    yield server, upload
    assert server.server is not None
    server.server.close()


COMMANDS = {
    "run (one-shot path)": ["run", "{where}", HOST, "--", "true"],
    "run (click path)": ["run", "{where}", "--keepalive", "30", HOST, "--", "true"],
    "get": ["get", "{where}", f"{HOST}:x", "{work}/got"],
    "put": ["put", "{where}", "--no-resume", "{upload}", f"{HOST}:x"],
    "shell (line mode)": ["shell", "{where}", HOST],
}


@pytest.mark.parametrize("command", list(COMMANDS.values()), ids=list(COMMANDS))
async def test_a_server_error_text_is_escaped(evil: tuple[EvilServer, Path], ids: Identities,
                                              work: Path, command: list[str]) -> None:
    server, upload = evil
    args: list[str] = []
    for word in command:
        if word == "{where}":
            args += ["-p", str(server.port), "--accept-new"]
        else:
            args.append(word.format(work=work, upload=upload))
    done = await arun_cli(*args, home=ids.client_home)
    assert done.returncode != 0
    assert_clean(done.stderr, lines=1)
    assert "\\x1b]0;owned\\x07\\x1b[2K\\x0dtransfer complete, 0 errors\\u2028next line" \
        in done.stderr, done.stderr


async def test_a_fan_out_summary_escapes_each_host_error(evil: tuple[EvilServer, Path],
                                                         ids: Identities) -> None:
    server, _ = evil
    done = await arun_cli("run", "-p", str(server.port), "--accept-new", f"{HOST},localhost",
                          "--", "true", home=ids.client_home)
    assert done.returncode == 1, done.stderr
    assert_clean(done.stderr)
    assert done.stderr.count("transfer complete, 0 errors") == 2  # one summary row per host
    for line in done.stderr.splitlines():
        if "transfer complete" in line:
            assert line.split()[0] in (HOST, "localhost")  # the row of its host, one line


async def test_the_path_of_a_resumed_upload_is_escaped(evil: tuple[EvilServer, Path],
                                                       ids: Identities) -> None:
    server, upload = evil
    done = await arun_cli("put", "-p", str(server.port), "--accept-new", str(upload),
                          f"{HOST}:x", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr, lines=1)
    assert done.stderr.startswith("tether: /srv/\\x1b]0;owned\\x07")
    assert done.stderr.rstrip().endswith(f": resumed at {MiB} bytes")


@contextlib.contextmanager
def discovery_liar(name: str, version: str) -> Iterator[int]:
    """A UDP responder on loopback answering each probe with ``name`` and ``version``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.1)
    port = sock.getsockname()[1]
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            ann = Announcement(HOST, port, name, "SHA256:" + "A" * 43, version)
            sock.sendto(encode_reply(decode_probe(data), ann, len(data)), source)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        sock.close()


async def test_a_discovery_reply_is_escaped(ids: Identities, work: Path) -> None:
    with discovery_liar(EVIL[:60], "\x1b[2J\x1b[H0.1") as port:
        done = await arun_cli("discover", "-p", str(port), "--retries", "0", HOST,
                              home=work / "home")
        added = await arun_cli("discover", "-p", str(port), "--retries", "0", "--add",
                               "--accept-new", HOST, home=work / "home")
    assert done.returncode == 0, done.stderr
    assert_clean(done.stdout + done.stderr)
    assert len(done.stdout.splitlines()) == 2  # the header and the one server, one line each
    assert "\\x1b]0;owned\\x07" in done.stdout and "\\x1b[2J\\x1b[H0.1" in done.stdout
    assert added.returncode == 0, added.stderr
    assert_clean(added.stdout + added.stderr)


async def test_progress_labels_are_never_markup(rig: Rig, ids: Identities, work: Path) -> None:
    """A local directory ``x[`` holding ``]`` (rich once died on it with MarkupError), a file
    named as a rich link, and one with an escape sequence in its name."""
    tree = work / "x["
    tree.mkdir()
    (tree / "]").write_bytes(b"close")
    link = "[link=https:evil.example]click [bold]here"
    (tree / link).write_bytes(b"link")
    (tree / "\x1b]0;owned\x07big").write_bytes(os.urandom(2 * MiB))  # its own bar
    (rig.root / "in").mkdir()
    done = await arun_cli("put", "-p", str(rig.port), "--accept-new", "-r", "--progress",
                          str(tree), f"{HOST}:in/", home=ids.client_home)
    assert done.returncode == 0, done.stderr
    assert "MarkupError" not in done.stderr
    assert (rig.root / "in" / "x[" / "]").read_bytes() == b"close"
    assert (rig.root / "in" / "x[" / link).read_bytes() == b"link"
    assert "\x1b]8;" not in done.stderr  # no hyperlink was made
    assert "\x1b]0;" not in done.stderr and "\x07" not in done.stderr
    assert "\\x1b]0;owned\\x07big" in done.stderr, done.stderr


async def test_the_debug_traceback_is_escaped_too(evil: tuple[EvilServer, Path],
                                                  ids: Identities, work: Path) -> None:
    server, _ = evil
    done = await arun_cli("--debug", "get", "-p", str(server.port), "--accept-new",
                          f"{HOST}:x", str(work / "got"), home=ids.client_home)
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert_clean(done.stderr)
    assert done.stderr.splitlines()[-1].startswith("tether: \\x1b]0;owned")
