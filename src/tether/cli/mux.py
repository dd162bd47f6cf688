"""``tether mux``: start, show and stop this user's connection-sharing process.

The mux itself is :mod:`tether.client.muxd`; the client side and the socket's place are in
:mod:`tether.client.mux`. ``tether mux start`` is what ``--mux auto`` runs when no mux answers:
it binds the socket (0600, in a 0700 directory), then forks, so that it returns as soon as
clients can connect. A lock file beside the socket makes two starts at once yield one mux.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

import click

HOME_HELP = "Identity and trust directory [default: $TETHER_HOME or ~/.config/tether]."


def home_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option("--home", envvar="TETHER_HOME", type=click.Path(file_okay=False),
                        help=HOME_HELP)(func)


@click.group()
def mux() -> None:
    """Share one connection per host between tether commands (like ssh's ControlMaster).

    Commands given --mux auto (or a host whose inventory entry says mux = "auto") start it on
    demand; it ends after --persist seconds without clients.
    """


@mux.command()
@home_option
@click.option("--persist", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds an idle shared connection, and then the mux, stays up.")
@click.option("--foreground", is_flag=True, help="Stay in the foreground (for debugging).")
def start(home: str | None, persist: float, foreground: bool) -> None:
    """Start the mux for this home, unless one runs already."""
    from tether.client import mux as client
    from tether.home import home_path

    home_dir = os.path.realpath(home_path(home))
    client.identity_fingerprint(home_dir)  # no identity: say so now, not in the background
    path = client.usable_path(home_dir)
    lock = _lock(path)
    if lock is None or _answers(path):
        click.echo(f"tether mux: already running on {path}", err=True)
        return
    sock = _bind(path)
    if not foreground and os.fork() != 0:
        os._exit(0)  # the socket listens already: the starter may connect at once
    if not foreground:
        os.setsid()
        _detach_stdio()
    from pathlib import Path

    from tether.client.muxd import run

    try:
        run(Path(home_dir), sock, path, persist)
    finally:
        os.close(lock)


def _lock(path: str) -> int | None:
    """An exclusive lock beside the socket, held for the mux's life; None if another holds it."""
    import fcntl

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.set_inheritable(fd, False)
    return fd


def _detach_stdio() -> None:
    """The background mux holds no pipe of its starter's open (whoever waits for the starter's
    output would wait for the mux's whole life)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _bind(path: str) -> socket.socket:
    """The listening socket, mode 0600 from the start (umask), replacing a stale one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


@mux.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(home: str | None, as_json: bool) -> None:
    """Show the running mux and its connections (exit 1 if none runs)."""
    from tether.client import mux as client
    from tether.home import home_path

    try:
        reply = client.request(home_path(home), {"op": "status"})
    except client.MuxUnavailable as exc:
        click.echo(f"tether: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    click.echo(f"mux pid {reply.get('pid')} on {reply.get('socket')}, "
               f"{reply.get('clients')} client(s), persist {reply.get('persist')} s")
    for conn in reply.get("connections", []):
        click.echo(f"  {conn['host']}:{conn['port']}  {conn['fingerprint']}  "
                   f"clients {conn['clients']}  streams {conn['streams']}  idle {conn['idle']} s")


@mux.command()
@home_option
def stop(home: str | None) -> None:
    """Stop the mux (its connections close; commands running through them are ended)."""
    from tether.client import mux as client
    from tether.home import home_path

    try:
        client.request(home_path(home), {"op": "stop"})
    except client.MuxUnavailable as exc:
        click.echo(f"tether: {exc}", err=True)
        sys.exit(1)
    click.echo("tether mux: stopped", err=True)
