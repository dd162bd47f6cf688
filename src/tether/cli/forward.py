"""``tether forward`` and the ``-L``/``-R``/``-D`` options of ``run`` and ``shell``, as ssh
writes them:

- ``-L [BIND:]PORT:DEST:DPORT``, ``-L [BIND:]PORT:/remote.sock``, ``-L /local.sock:DEST:DPORT``,
  ``-L /local.sock:/remote.sock`` — listen here, connect from the server;
- ``-R`` the same shapes, listening on the server (``-R 0:...``: the server chooses the port,
  printed) and connecting from here;
- ``-D [BIND:]PORT`` (or ``-D /local.sock``) — a SOCKS5 proxy here, names resolved there.

IPv6 addresses go in brackets (``-L [::1]:8080:[::1]:80``); BIND ``*`` is every interface.
Each listener is announced in one line (stdout for ``tether forward``, stderr when a command's
output owns stdout); each failed connection is one line on stderr, and the forwards go on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.cli.escape import printable
from tether.defaults import CONNECT_TIMEOUT
from tether.errors import UsageError

if TYPE_CHECKING:
    from tether.client.api import Connection
    from tether.client.forward import Forwarder


@dataclass(frozen=True)
class ForwardSpec:
    """One parsed ``-L``, ``-R`` or ``-D``."""

    kind: str  # "L", "R", "D"
    listen_host: str
    listen_port: int
    listen_path: str = ""
    dest_host: str = ""
    dest_port: int = 0
    dest_path: str = ""


def _split(text: str) -> list[str]:
    """``text`` split at colons outside brackets, brackets removed."""
    parts, word, depth = [], "", 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == ":" and depth == 0:
            parts.append(word)
            word = ""
            continue
        word += char
    parts.append(word)
    return [p[1:-1] if p.startswith("[") and p.endswith("]") else p for p in parts]


def _port(text: str, spec: str, flag: str, zero: bool) -> int:
    if not text.isdigit() or not (0 if zero else 1) <= int(text) <= 65535:
        raise UsageError(f"{flag} {spec}: {text!r} is not a port number")
    return int(text)


def _bind(words: list[str], spec: str, flag: str, default: str) -> tuple[str, int, str]:
    """The listening side: ``[BIND:]PORT`` or a socket path."""
    if len(words) == 1 and words[0].startswith("/"):
        return "", 0, words[0]
    if len(words) == 1:
        return default, _port(words[0], spec, flag, zero=True), ""
    if len(words) == 2:
        host = "0.0.0.0" if words[0] in ("*", "") else words[0]
        return host, _port(words[1], spec, flag, zero=True), ""
    raise UsageError(f"{flag} {spec}: write [BIND:]PORT:DEST:DPORT (see --help)")


def parse_spec(kind: str, spec: str) -> ForwardSpec:
    """One ``-L``/``-R``/``-D`` value; UsageError (exit 2) naming what is wrong."""
    flag = f"-{kind}"
    words = _split(spec)
    if kind == "D":
        host, port, path = _bind(words, spec, flag, "127.0.0.1")
        return ForwardSpec("D", host, port, path)
    default = "127.0.0.1" if kind == "L" else ""
    if len(words) >= 2 and words[-1].startswith("/"):
        dest_host, dest_port, dest_path, listen = "", 0, words[-1], words[:-1]
    elif len(words) >= 3:
        dest_host, dest_path, listen = words[-2], "", words[:-2]
        dest_port = _port(words[-1], spec, flag, zero=False)
        if not dest_host:
            raise UsageError(f"{flag} {spec}: the destination host is empty")
    else:
        raise UsageError(f"{flag} {spec}: write [BIND:]PORT:DEST:DPORT (see --help)")
    host, port, path = _bind(listen, spec, flag, default)
    return ForwardSpec(kind, host, port, path, dest_host, dest_port, dest_path)


def parse_specs(local: Sequence[str] = (), remote: Sequence[str] = (),
                dynamic: Sequence[str] = ()) -> list[ForwardSpec]:
    return ([parse_spec("L", s) for s in local] + [parse_spec("R", s) for s in remote]
            + [parse_spec("D", s) for s in dynamic])


def _to_stderr(line: str) -> None:
    print(f"tether: {printable(line)}", file=sys.stderr, flush=True)


announce_on_stderr = _to_stderr  # run and shell: stdout is the command's


async def start_forwards(conn: Connection, specs: Sequence[ForwardSpec], host: str,
                         announce: Callable[[str], None]) -> list[Forwarder]:
    """Start every forward (the first that cannot start is raised, the others closed) and
    announce each in one line."""
    started: list[Forwarder] = []
    try:
        for spec in specs:
            started.append(await _start(conn, spec))
            fwd = started[-1]
            if spec.kind == "L":
                announce(f"local {fwd.listening} -> {_dest(spec)} (from {host})")
            elif spec.kind == "R":
                announce(f"remote {fwd.listening} (on {host}) -> {_dest(spec)}")
            else:
                announce(f"socks {fwd.listening} (connections leave from {host})")
    except OSError as exc:
        for fwd in started:
            fwd.close()
        raise UsageError(f"cannot listen for -{spec.kind}: {exc.strerror or exc}") from None
    except BaseException:
        for fwd in started:
            fwd.close()
        raise
    return started


def _dest(spec: ForwardSpec) -> str:
    from tether.client.forward import where

    return where(spec.dest_host, spec.dest_port, spec.dest_path)


async def _start(conn: Connection, spec: ForwardSpec) -> Forwarder:
    if spec.kind == "L":
        return await conn.forward_local(spec.listen_port, spec.dest_host, spec.dest_port,
                                        listen_host=spec.listen_host,
                                        listen_path=spec.listen_path,
                                        dest_path=spec.dest_path, report=_to_stderr)
    if spec.kind == "R":
        return await conn.forward_remote(spec.listen_port, spec.dest_host, spec.dest_port,
                                         listen_host=spec.listen_host,
                                         listen_path=spec.listen_path,
                                         dest_path=spec.dest_path, report=_to_stderr)
    return await conn.forward_socks(spec.listen_port, listen_host=spec.listen_host,
                                    listen_path=spec.listen_path, report=_to_stderr)


def _to_stdout(line: str) -> None:
    print(printable(line), flush=True)


async def _forward(host: str, port: int, home: str | None, accept_new: bool, plaintext: bool,
                   keepalive: float, specs: list[ForwardSpec], via: Sequence[str],
                   timeout: float) -> int:
    from tether.cli.shared import confirm_on_tty
    from tether.client.api import connect

    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(host, port, home=home, accept_new=accept_new, plaintext=plaintext,
                       confirm=confirm, keepalive=keepalive, via=list(via),
                       timeout=timeout) as conn:
        forwards = await start_forwards(conn, specs, host, _to_stdout)
        try:
            await conn.wait_closed()  # until Ctrl-C, or the connection ends (raised)
        finally:
            for fwd in forwards:
                fwd.close()
    return 0


def forward_main(host: str, port: int, home: str | None, accept_new: bool, plaintext: bool,
                 keepalive: float, local: Sequence[str], remote: Sequence[str],
                 dynamic: Sequence[str], via: Sequence[str] = (),
                 timeout: float = CONNECT_TIMEOUT) -> int:
    """``tether forward``: exit status by the policy (130 on Ctrl-C, 255 when the connection
    ends)."""
    specs = parse_specs(local, remote, dynamic)
    if not specs:
        raise UsageError("nothing to forward: give -L, -R or -D (see tether forward --help)")
    return asyncio.run(_forward(host, port, home, accept_new, plaintext, keepalive, specs, via,
                                timeout))


async def _stdio() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """stdin and stdout as an asyncio stream pair (pipes, sockets or files)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 open(0, "rb", buffering=0, closefd=False))  # noqa: SIM115
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, open(1, "wb", buffering=0, closefd=False))  # noqa: SIM115
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _proxy(host: str, port: int, home: str | None, accept_new: bool, plaintext: bool,
                 keepalive: float, dest: str, dest_port: int, via: Sequence[str],
                 timeout: float) -> int:
    from tether.cli.shared import confirm_on_tty
    from tether.client.api import connect
    from tether.client.forward import open_stream, pipe

    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(host, port, home=home, accept_new=accept_new, plaintext=plaintext,
                       confirm=confirm, keepalive=keepalive, via=list(via),
                       timeout=timeout) as conn:
        handle, _ = await open_stream(conn, host=dest, port=dest_port, origin="proxy")
        reader, writer = await _stdio()
        await pipe(handle, reader, writer)
    return 0


def proxy_main(host: str, port: int, home: str | None, accept_new: bool, plaintext: bool,
               keepalive: float, dest: str, dest_port: int, via: Sequence[str] = (),
               timeout: float = CONNECT_TIMEOUT) -> int:
    """``tether proxy``: 0 when both directions ended; a refusal by the policy's status."""
    return asyncio.run(_proxy(host, port, home, accept_new, plaintext, keepalive, dest,
                              dest_port, via, timeout))
