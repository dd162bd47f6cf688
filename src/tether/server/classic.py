"""The classic protocol: serve the two clients of the classic socket tutorial, opt-in only.

This module owns everything about that protocol: its listener, telling its two modes apart, its
commands and its file transfers. It is separate from the TLS listener on purpose: the classic
protocol has no authentication and no encryption, so it gets its own port (loopback unless the
operator says otherwise, see :func:`classic_config`) and never shares a byte or a code path with
tether's framed protocol. What it does share are the server's rules: the shell, process
groups and kills of :mod:`tether.server.process`, and the confined, atomic file access of
:class:`tether.storage.area.FileArea`. Its configuration is
:class:`tether.server.config.ClassicConfig`.

docs/PROTOCOL.md, section "Classic", is the normative description. In short, a connection is a
sequence of requests; each request begins with whatever one read delivers:

* 4 bytes ``struct.pack('i', n)`` with ``1 <= n <= MAX_HEADER`` followed by ``{``: a *file
  request*, a JSON header of n bytes ``{"opt", "filename", "filesize"}``, then for an upload
  exactly ``filesize`` raw bytes (no reply); a download is answered with a header in the same
  format and the bytes;
* anything else: a *command*, that read (at most :data:`COMMAND_MAX` bytes) being the command,
  answered with its stdout if there was any, else its stderr, else a short note.

Every wait is bounded (idle and read deadlines, the command timeout, header, upload, output and
connection caps); the TLS server's upload cap and command rlimits apply too. A peer that breaks
the rules (a malformed header, binary bytes where a command should be, a refused upload) is
logged in one line and disconnected; nothing it sends reaches the TLS listener. Each request is
logged as ``classic PEER: ...`` and written to the audit log as a ``classic`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import TetherError, UnsafePath
from tether.server.audit import AuditLog
from tether.server.config import ClassicConfig, is_loopback
from tether.server.environment import login_environment
from tether.server.limits import Limits
from tether.server.process import (
    Preexec,
    kill_group,
    login_shell,
    rlimits,
    spawn_error,
    start_piped,
    terminate,
)
from tether.storage.area import FileArea
from tether.storage.names import check_name
from tether.storage.partial import PartialFile
from tether.storage.reserved import Reserved
from tether.storage.source import SourceFile

log = logging.getLogger("tether.server.classic")

COMMAND_MAX = 1024  # the tutorial client's recv size: one read is one command
MAX_HEADER = 64 * 1024  # a plausible header length is 1..MAX_HEADER
LENGTH = struct.Struct("<i")  # the tutorial's struct.pack('i'): little-endian where tether runs
CHUNK = 256 * 1024
UPLOAD_MODE = 0o644  # the classic client sends no mode; what a umask of 022 would give
OPTS = ("upload", "download")


# --- the wire: pure functions -------------------------------------------------------------------


class Malformed(Exception):
    """The peer broke the classic protocol; the message is one line for the log."""


@dataclass(frozen=True)
class FileRequest:
    opt: str
    filename: str
    filesize: int


def _plausible(length: int) -> bool:
    return 1 <= length <= MAX_HEADER


def is_file_request(data: bytes) -> bool:
    """True when ``data`` starts like a classic file header: a plausible length, then ``{``."""
    return len(data) >= 5 and _plausible(LENGTH.unpack_from(data)[0]) and data[4:5] == b"{"


def may_be_file_request(data: bytes) -> bool:
    """Exactly a plausible length so far: the ``{`` that decides may still be on its way."""
    return len(data) == 4 and _plausible(LENGTH.unpack(data)[0])


def pack_header(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header).encode("utf-8")
    return LENGTH.pack(len(raw)) + raw


def parse_header(raw: bytes, max_file: int) -> FileRequest:
    """The request in a header's JSON bytes, or Malformed."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Malformed(f"header is not JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise Malformed("header is not a JSON object")
    opt, filename, size = obj.get("opt"), obj.get("filename"), obj.get("filesize")
    if opt not in OPTS:
        raise Malformed(f"header opt {str(opt)[:20]!r} is neither upload nor download")
    if not isinstance(filename, str):
        raise Malformed("header filename is not a string")
    if opt == "download":
        return FileRequest(opt, filename, 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Malformed("header filesize is not a non-negative integer")
    if size > max_file:
        raise Malformed(f"upload of {size} bytes exceeds the limit of {max_file}")
    return FileRequest(opt, filename, size)


_HTTP_REQUEST = re.compile(
    rb"^(?:GET|POST|PUT|HEAD|OPTIONS|DELETE|PATCH|CONNECT|TRACE) +\S+ +HTTP/\d", re.I)
_HTTP_HEADER = re.compile(rb"^(?:host|origin|user-agent|content-type|content-length|referer)"
                          rb"[ \t]*:", re.I | re.M)


def looks_like_http(data: bytes) -> bool:
    """Whether a request is HTTP: a request line (a method word, a path, ``HTTP/``) or a header
    line a browser always sends. A web page can make a browser POST to 127.0.0.1 without any
    preflight; were its body run as a command, any page could run commands here (Redis refuses
    the same way)."""
    return bool(_HTTP_REQUEST.match(data) or _HTTP_HEADER.search(data))


def basename(filename: str) -> str:
    """The one name a classic request may use: the last component (after / or \\), checked;
    UnsafePath for '', '.', '..' or a NUL byte."""
    return check_name(filename.replace("\\", "/").rsplit("/", 1)[-1])


# --- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShellResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool
    duration: float


async def _collect(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    """All of a pipe's output up to ``cap`` bytes (the rest is read and dropped)."""
    buf = bytearray()
    truncated = False
    while chunk := await stream.read(CHUNK):
        room = cap - len(buf)
        truncated = truncated or len(chunk) > room
        buf += chunk[: max(room, 0)]
    return bytes(buf), truncated


async def run_shell(command: str, cwd: Path, config: ClassicConfig, kill_grace: float,
                    preexec: Preexec = None, pass_env: tuple[str, ...] = ()) -> ShellResult:
    """Run ``command`` with the login shell in a process group of its own (with the server's
    resource limits, through ``preexec``); on timeout the group gets SIGTERM, then SIGKILL after
    ``kill_grace``. Whatever the command leaves running in its group is killed when it exits,
    as when a terminal closes."""
    started = time.monotonic()
    proc, out_pipe, err_pipe = await start_piped([login_shell(), "-c", command], cwd=cwd,
                                                 env=login_environment(pass_env), stdin=False,
                                                 preexec=preexec)
    readers = [asyncio.create_task(_collect(pipe, config.max_output))
               for pipe in (out_pipe, err_pipe)]
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), config.timeout)
        except TimeoutError:
            timed_out = True
            await terminate(proc, kill_grace)
        kill_group(proc.pid, signal.SIGKILL)
        (out, cut_out), (err, cut_err) = await asyncio.gather(*readers)
    finally:  # also when the server shuts down mid-command
        kill_group(proc.pid, signal.SIGKILL)
        for task in readers:
            task.cancel()
    code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    return ShellResult(code, out, err, timed_out, cut_out or cut_err,
                       time.monotonic() - started)


def command_reply(result: ShellResult, config: ClassicConfig, encoding: str) -> bytes:
    """stdout if there was any, else stderr, plus a note when the whole story is not in it:
    a timeout, truncated output, or no output at all (so the client's recv never hangs)."""
    body = result.stdout or result.stderr
    notes = []
    if result.truncated:
        notes.append(f"tether: output truncated at {config.max_output} bytes")
    if result.timed_out:
        notes.append(f"tether: timed out after {config.timeout:g}s; process group killed")
    elif not body:
        notes.append(f"tether: no output ({describe_status(result.returncode)})")
    if not notes:
        return body
    gap = b"\n" if body and not body.endswith(b"\n") else b""
    return body + gap + "".join(f"{note}\n" for note in notes).encode(encoding, "replace")


def describe_status(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


# --- one connection -----------------------------------------------------------------------------


class _Drop(Exception):
    """End this connection; the message is one line for the log."""


class _Input:
    """The connection's bytes with a put-back buffer, so detection can look before it leaps."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = bytearray()

    async def some(self, limit: int, timeout: float) -> bytes:
        """Buffered bytes, else what one read delivers: at most ``limit``; b'' at EOF."""
        if self._buffer:
            data = bytes(self._buffer[:limit])
            del self._buffer[:limit]
            return data
        return await asyncio.wait_for(self._reader.read(limit), timeout)

    async def exactly(self, n: int, timeout: float, what: str) -> bytes:
        while len(self._buffer) < n:
            data = await asyncio.wait_for(self._reader.read(max(n - len(self._buffer), CHUNK)),
                                          timeout)
            if not data:
                raise _Drop(f"connection closed in the middle of {what}")
            self._buffer += data
        return await self.some(n, timeout)

    def unread(self, data: bytes) -> None:
        self._buffer[:0] = data


class ClassicConnection:
    """One classic client: a loop of commands and file requests until it leaves."""

    def __init__(self, server: ClassicServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.config = server.config
        self.input = _Input(reader)
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def _record(self, op: str, message: str, *, warn: bool = False, **fields: Any) -> None:
        """One log line ``classic PEER: ...`` and one ``classic`` audit event."""
        log.log(logging.WARNING if warn else logging.INFO, "classic %s: %s", self.peer, message)
        self.server.audit.event("classic", address=self.peer, op=op, **fields)

    async def serve(self) -> None:
        try:
            while await self._request():
                pass
        except (_Drop, Malformed, TetherError) as exc:
            self._record("closed", f"{exc}; closing the connection", warn=True, reason=str(exc))
        except TimeoutError:
            self._record("closed", "silent for too long; closing the connection",
                         reason="timeout")
        except OSError as exc:
            reason = f"connection lost ({exc.strerror or exc})"
            self._record("closed", reason, reason=reason)

    async def _request(self) -> bool:
        """Serve one request; False when the client has gone."""
        data = await self.input.some(COMMAND_MAX, self.config.idle_timeout)
        if not data:
            return False
        self.server.busy += 1
        try:
            if may_be_file_request(data):
                data += await self.input.some(COMMAND_MAX, self.config.read_timeout)
            if is_file_request(data):
                self.input.unread(data)
                await self._file_request()
            else:
                await self._command(data)
        finally:
            self.server.busy -= 1
        return True

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.config.read_timeout)

    # --- commands ------------------------------------------------------------------------------

    async def _command(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        encoding = self.server.encoding
        if looks_like_http(data):  # a browser sent this for some web page: run nothing
            raise _Drop("an HTTP request (a web page?) on the classic port: nothing was run")
        if "\0" in text:  # binary, e.g. a header too long to be one: nothing after is trusted
            await self._send(b"tether: NUL byte in command; closing the connection\n")
            raise _Drop("NUL byte in a command (not a file header the server recognizes)")
        if not text.strip():
            self._record("command", "command refused: empty command", command=text,
                         outcome="empty command")
            await self._send("tether: empty command\n".encode(encoding, "replace"))
            return
        server = self.server
        try:
            result = await run_shell(text, server.root, self.config, server.kill_grace,
                                     server.preexec, server.pass_env)
        except (OSError, ValueError) as exc:
            failure = spawn_error(login_shell(), exc)
            self._record("command", f"command {text[:200]!r}: {failure}", warn=True,
                         command=text, outcome=str(failure))
            await self._send(f"tether: {failure}\n".encode(encoding, "replace"))
            return
        reply = command_reply(result, self.config, encoding)
        code = result.returncode
        self._record(
            "command", f"command {text[:200]!r} -> {describe_status(code)}"
            f"{', timed out' if result.timed_out else ''}, {len(reply)} bytes in "
            f"{result.duration:.3f}s", command=text, status=code if code >= 0 else None,
            signal=-code if code < 0 else None, timed_out=result.timed_out,
            duration=round(result.duration, 6), bytes=len(reply))
        await self._send(reply)

    # --- files ---------------------------------------------------------------------------------

    async def _file_request(self) -> None:
        raw = await self.input.exactly(LENGTH.size, self.config.read_timeout, "a header")
        (length,) = LENGTH.unpack(raw)
        header = await self.input.exactly(length, self.config.read_timeout, "a header")
        req = parse_header(header, self.server.max_file)
        if req.opt == "upload":
            await self._upload(req)
        else:
            await self._download(req)

    def _area(self) -> FileArea:
        return FileArea(self.server.root, confined=True, reserved=self.server.reserved)

    async def _upload(self, req: FileRequest) -> None:
        """Store exactly ``filesize`` bytes under a fresh name; there is no reply, so a refusal
        closes the connection (the client cannot be told otherwise)."""
        try:
            name = basename(req.filename)
        except UnsafePath as exc:
            raise _Drop(f"upload refused: {exc}") from None
        partial = self._area().open_upload(name)
        try:
            await self._receive(partial, req.filesize)
            digest = partial.hash  # ours: the classic client sends none
            stored = partial.commit(digest, UPLOAD_MODE, None, force=False, rename=True)
        except BaseException:
            partial.discard()
            raise
        finally:
            partial.close()
        self._record("upload", f"upload {req.filename!r}, {req.filesize} bytes, stored as "
                     f"{stored!r}", filename=req.filename, stored=stored, bytes=req.filesize,
                     hash=digest, outcome="ok")

    async def _receive(self, partial: PartialFile, size: int) -> None:
        remaining = size
        while remaining:
            data = await self.input.some(min(CHUNK, remaining), self.config.read_timeout)
            if not data:
                raise _Drop(f"upload of {partial.name!r} ended after {size - remaining} of "
                            f"{size} bytes; nothing stored")
            partial.write(data)
            remaining -= len(data)

    async def _download(self, req: FileRequest) -> None:
        """A header with the size, then the bytes; a header with ``error`` and size 0 when the
        file cannot be sent (the connection stays open)."""
        try:
            name = basename(req.filename)
            source = self._area().open_source(name)
        except TetherError as exc:
            self._record("download", f"download {req.filename!r} refused: {exc}",
                         filename=req.filename, outcome=str(exc))
            await self._send(pack_header({"opt": "download", "filename": req.filename,
                                          "filesize": 0, "error": str(exc)}))
            return
        try:
            await self._send(pack_header({"opt": "download", "filename": name,
                                          "filesize": source.size}))
            await self._send_bytes(source)
        finally:
            source.close()
        self._record("download", f"download {name!r}, {source.size} bytes", filename=name,
                     bytes=source.size, outcome="ok")

    async def _send_bytes(self, source: SourceFile) -> None:
        try:
            for chunk in source.chunks(0):
                await self._send(chunk)
        except TetherError as exc:  # it shrank: the client was promised more bytes than exist
            raise _Drop(str(exc)) from None


# --- the listener -------------------------------------------------------------------------------


class ClassicServer:
    """The classic listener; :class:`tether.server.listener.Server` starts and closes it."""

    def __init__(self, config: ClassicConfig, root: Path, encoding: str,
                 kill_grace: float = 1.0, *, audit: AuditLog | None = None,
                 limits: Limits | None = None, reserved: Reserved | None = None,
                 pass_env: tuple[str, ...] = ()) -> None:
        """``limits`` are the TLS server's: their upload cap (if lower than ours) and command
        rlimits apply here too."""
        if not is_loopback(config.host) and not config.allow_remote:
            raise TetherError(f"the classic protocol may not listen on {config.host} "
                              f"without allow_remote")
        lim = limits or Limits()
        self.config = config
        self.root = root
        self.encoding = encoding
        self.kill_grace = kill_grace
        self.audit = audit or AuditLog(None)
        self.reserved = reserved or Reserved()
        self.max_file = min(config.max_file, lim.max_upload or config.max_file)
        self.preexec = rlimits(lim.process_nproc, lim.process_memory)
        self.pass_env = pass_env
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.busy = 0  # requests being served now: a drain (server/service.py) waits for them

    @property
    def port(self) -> int:
        return self.config.port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, backlog=128,
        )
        self.config.port = self._server.sockets[0].getsockname()[1]

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.config.max_connections:
            log.warning("classic: %d connections already; closing a new one",
                        len(self._tasks))
            writer.close()
            return
        self._tasks.add(task)
        try:
            await ClassicConnection(self, reader, writer).serve()
        except asyncio.CancelledError:
            pass  # close() ended it; asyncio's stream callback must not see a cancelled task
        except Exception:  # a bug in one connection must never take the listener down
            log.exception("classic connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    def stop_accepting(self) -> None:
        """No new connections (a drain); those already up carry on."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop listening and end every connection (killing any running command's group)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
