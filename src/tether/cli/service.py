"""``tether service install`` (the systemd unit shipped in ``tether/data/``) and
``tether rotate-key`` (a new server key without a CHANGED error, server/rotation.py).

The unit runs ``tether serve`` as one user (``--user NAME``, default: whoever installs it) with
``Type=notify`` (READY=1 once listening), ``ExecReload`` as SIGHUP, a stop timeout longer than
the drain, ``LimitNOFILE`` and the hardening directives that leave that user's own commands
working. Root gets fewer of them: ``NoNewPrivileges`` and ``ProtectSystem`` would stop an admin's
``sudo``-less package upgrade run through tether.
"""

from __future__ import annotations

import math
import shlex
import sys
from importlib import resources
from pathlib import Path

import click

from tether.cli.options import HOME, click_options
from tether.errors import ConfigError

SYSTEM_DIR = "/etc/systemd/system"
DEFAULT_DRAIN = 10.0  # seconds: tether serve --drain's default (cli/serve.py)
HARDENING_ALL = [
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes",
    "RestrictRealtime=yes", "LockPersonality=yes", "SystemCallArchitectures=native",
]
HARDENING_USER = ["NoNewPrivileges=yes", "ProtectSystem=full", "RestrictSUIDSGID=yes"]


def template(name: str) -> str:
    return resources.files("tether").joinpath("data", name).read_text(encoding="utf-8")


def _account(user: str) -> tuple[str, str]:
    """The user's primary group and home directory; ConfigError if there is no such user."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"no such user: {user}") from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return group, entry.pw_dir


def _quote(text: str) -> str:
    """A word for a unit file's command line: systemd splits on spaces and honours quotes, and
    expands ``%`` specifiers and ``$`` variables, which a path must not trigger."""
    return shlex.quote(text.replace("%", "%%").replace("$", "$$"))


def _environment(name: str, value: str) -> str:
    """An ``Environment=`` assignment, double-quoted (a home may hold spaces)."""
    text = value.replace("%", "%%").replace("$", "$$").replace("\\", "\\\\")
    return '"' + f"{name}={text}".replace('"', '\\"') + '"'


def render_service(user: str, home: str | None, config: str | None,
                   drain: float | None = None) -> str:
    """The unit text for ``user`` (their tether home unless ``home`` is given); the stop timeout
    is the drain (by default the configured one) plus 20 s for the kill grace and the exit."""
    group, user_home = _account(user)
    home = home or str(Path(user_home) / ".config" / "tether")
    if drain is None:
        drain = configured_drain(Path(home), config)
    argv = [sys.executable, "-m", "tether", "serve", "--home", home]
    if config:
        argv += ["--config", config]
    hardening = HARDENING_ALL if user == "root" else [*HARDENING_USER, *HARDENING_ALL]
    return template("tether.service").format(
        user=user, group=group, environment=_environment("TETHER_HOME", home),
        exec_start=" ".join(_quote(word) for word in argv),
        stop_timeout=math.ceil(drain) + 20, hardening="".join(line + "\n" for line in hardening),
    )


def render_socket(listen: str) -> str:
    """tether.socket listening on ``[ADDR:]PORT``; a bare port means 127.0.0.1, as ``tether
    serve``'s own default does (every interface is an explicit ``0.0.0.0:PORT`` or ``[::]:PORT``,
    never an accident)."""
    if listen.isdigit():
        listen = f"127.0.0.1:{listen}"
    return template("tether.socket").format(listen=listen)


def configured_drain(home: Path, config: str | None) -> float:
    """The drain the server will use (the configuration file's ``drain``, else the default), so
    the unit's stop timeout outlasts it. A file that cannot be read is ``tether serve``'s to
    report; here it means the default."""
    import tomllib

    path = Path(config) if config else home / "serve.toml"
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("drain", DEFAULT_DRAIN)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return DEFAULT_DRAIN
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else DEFAULT_DRAIN


@click.group()
def service() -> None:
    """Run `tether serve` as a system service (systemd)."""


@service.command()
@click.option("--user", "user", metavar="NAME",
              help="Run the server as this user [default: you].")
@click.option("--home", type=click.Path(file_okay=False),
              help="The server's tether home [default: ~NAME/.config/tether].")
@click.option("--config", type=click.Path(dir_okay=False),
              help="A configuration file for `tether serve --config` [default: HOME/serve.toml "
                   "when it exists].")
@click.option("--socket", "listen", metavar="[ADDR:]PORT",
              help="Also install tether.socket, listening here (socket activation; a bare "
                   "PORT means 127.0.0.1).")
@click.option("--drain", type=click.FloatRange(min=0), metavar="S",
              help="The server's drain, for the unit's stop timeout (S + 20 s) [default: the "
                   "configuration file's drain, else 10].")
@click.option("--dest", type=click.Path(file_okay=False), default=SYSTEM_DIR,
              show_default=True, help="Directory for the unit files.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit(s); write nothing.")
def install(user: str | None, home: str | None, config: str | None, listen: str | None,
            drain: float | None, dest: str, print_only: bool) -> None:
    """Write tether.service (and tether.socket with --socket) for systemd."""
    import getpass

    user = user or getpass.getuser()
    units = {"tether.service": render_service(user, home, config, drain)}
    if listen:
        units["tether.socket"] = render_socket(listen)
    if print_only:
        click.echo("\n".join(units.values()), nl=False)
        return
    folder = Path(dest)
    for name, text in units.items():
        target = folder / name
        try:
            target.write_text(text)
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
        click.echo(f"wrote {target}")
    first = "tether.socket" if listen else "tether.service"
    click.echo(f"next: systemctl daemon-reload && systemctl enable --now {first}")


@click.command("rotate-key")
@click_options([HOME])
@click.option("--overlap", default=7 * 86400.0, show_default=True, type=float,
              help="Seconds the new key is announced to clients before it replaces the old.")
@click.option("--retire", is_flag=True,
              help="End a rotation now: the new key replaces the old one at once.")
def rotate_key(home: str | None, overlap: float, retire: bool) -> None:
    """Give the server a new key without clients seeing a CHANGED error.

    Clients that connect during the overlap pin the new key beside the old; a running server
    picks the change up by itself (or on SIGHUP).
    """
    from tether.identity import home_dir
    from tether.server.rotation import retire_now, start_rotation

    h = home_dir(home)
    if retire:
        click.echo(f"the server key is now {retire_now(h)}; the old key is deleted")
        return
    pending = start_rotation(h, overlap)
    click.echo(f"next server key {pending.fingerprint}, announced for {overlap:g} s; "
               f"then it replaces the current one")
    from tether.home import signed_cert_file

    if Path(signed_cert_file(h, "server")).exists():
        click.echo("note: the CA-signed host certificate is for the current key; it is set "
                   "aside when the new key takes over, so have the CA sign the new key then "
                   "(clients that pin fingerprints are not affected)", err=True)

