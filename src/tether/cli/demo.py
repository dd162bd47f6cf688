"""``tether demo``: the whole system in one process, with nothing to set up and nothing left over.

Throwaway client and server identities go in a temporary directory; the client is authorized and
the server pinned exactly as a user would do it by hand; then a few commands show what the classic
socket tutorial gets wrong and tether gets right.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import click

from tether.cli.escape import printable
from tether.client.api import Connection, RunResult, connect
from tether.identity import AuthorizedClient, add_authorized, generate_identity
from tether.server.listener import Server, ServerConfig

STEPS: list[tuple[str, str]] = [
    ("a small command", "echo hello from $(uname -s)"),
    ("lots of output (5 MB: more than any recv size)", "seq 1 700000"),
    ("a command that fails", "ls /no/such/dir"),
    ("output on stderr only", "echo 'warning: disk almost full' >&2"),
    ("an exit status of its own", "exit 42"),
]


def _describe(result: RunResult, seconds: float) -> str:
    out, err = result.stdout, result.stderr
    lines = out.count(b"\n")
    shown = out.decode(result.encoding, "replace").strip()
    if lines > 3:
        tail = shown.splitlines()
        shown = f"{tail[0]} … {tail[-1]}  ({lines:,} lines, {len(out):,} bytes, all of them)"
    parts = [f"exit {result.status}", f"{seconds * 1000:.1f} ms"]
    text = f"   stdout: {shown or '(none)'}\n"
    if err:
        text += f"   stderr: {err.decode(result.encoding, 'replace').strip()}\n"
    return text + "   " + ", ".join(parts)


def _command(client_home: Path, port: int, cmd: str) -> str:
    """The ``tether run`` line a user can paste to do the same (quoted for a POSIX shell)."""
    return shlex.join(["tether", "run", "--home", str(client_home), "-p", str(port),
                       "127.0.0.1", "--", cmd])


async def _demo(tmp: Path, keep: bool) -> None:
    server_home, client_home = tmp / "server", tmp / "client"
    started = time.perf_counter()
    server_id = generate_identity(server_home, "demo-server", "server")
    client_id = generate_identity(client_home, "demo-client", "client")
    add_authorized(server_home, AuthorizedClient(client_id.cert_der, client_id.name))
    click.echo(f"identities: server {server_id.fingerprint}\n            client "
               f"{client_id.fingerprint}")
    server = Server(ServerConfig(home=server_home, port=0, root=tmp, name="demo-server"),
                    server_id)
    await server.start()
    click.echo(f"server: listening on 127.0.0.1:{server.port} (TLS 1.3, client certificates "
               f"required)")
    try:
        conn: Connection
        async with connect("127.0.0.1", server.port, home=client_home, accept_new=True) as conn:
            click.echo(f"connected and authenticated in {(time.perf_counter() - started):.2f} s "
                       f"(server pinned in {client_home / 'known_hosts'})\n")
            for title, cmd in STEPS:
                click.echo(f"$ {_command(client_home, server.port, cmd)}    # {title}")
                t0 = time.perf_counter()
                result = await conn.run(cmd)
                click.echo(_describe(result, time.perf_counter() - t0) + "\n")
            click.echo(f"$ {_command(client_home, server.port, '')}    # an empty command")
            try:
                await conn.run("")
            except Exception as exc:  # the demo shows the error the user would see
                click.echo(f"   refused at once: {printable(exc)}\n")
            t0 = time.perf_counter()
            results = await asyncio.gather(*(conn.run(f"sleep 0.2; echo {i}") for i in range(5)))
            click.echo(f"5 × 'sleep 0.2' at once over one connection: "
                       f"{time.perf_counter() - t0:.2f} s, outputs "
                       f"{[r.text.strip() for r in results]}")
    finally:
        await server.close()
    click.echo(f"\ndone in {time.perf_counter() - started:.2f} s; server stopped.")
    if keep:
        serve = shlex.join(["tether", "serve", "--home", str(server_home), "-p",
                            str(server.port), "--root", str(tmp)])
        click.echo(f"to try the commands above again, start the server: {serve}")


def demo_main(keep: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    try:
        asyncio.run(_demo(tmp, keep))
    finally:
        if keep:
            click.echo(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            click.echo(f"cleaned up {tmp}")
