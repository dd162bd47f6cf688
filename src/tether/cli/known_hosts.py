"""``tether known-hosts``: list the pinned servers, or forget one (as ``ssh-keygen -R``).

After a server really got a new identity (reinstalled, key rotated by hand), its old pin makes
every connection fail with "THE SERVER'S IDENTITY HAS CHANGED"; ``forget`` removes that pin so
the next connection asks again (or takes ``--accept-new``). Its top level imports click alone:
``tether`` loads it at start-up to register the command.
"""

from __future__ import annotations

import click

from tether.cli.escape import printable
from tether.cli.hosts import home_option


@click.group("known-hosts")
def known_hosts() -> None:
    """The servers this client has pinned ($TETHER_HOME/known_hosts)."""


@known_hosts.command("list")
@home_option
def list_(home: str | None) -> None:
    """Print each pin: HOST (or [HOST]:PORT) and its fingerprint."""
    from tether.identity import home_dir, known_hosts_path

    try:
        text = known_hosts_path(home_dir(home)).read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            click.echo(printable(line))


@known_hosts.command()
@home_option
@click.argument("host")
@click.option("-p", "--port", type=click.IntRange(1, 65535),
              help="Only the pin for this port [default: the host's pins at every port].")
def forget(home: str | None, host: str, port: int | None) -> None:
    """Remove HOST's pinned fingerprints, so the next connection asks again."""
    from tether.errors import IdentityError
    from tether.identity import forget_known_host, home_dir, known_hosts_path

    if host.startswith("[") and "]:" in host and port is None:  # "[host]:port", as printed
        host, _, digits = host[1:].partition("]:")
        port = int(digits) if digits.isdigit() and 0 < int(digits) < 65536 else None
        if port is None:
            raise click.BadParameter(f"{digits!r} is not a port", param_hint="HOST")
    path = known_hosts_path(home_dir(home))
    removed = forget_known_host(home_dir(home), host, port)
    where = host if port is None else f"{host} port {port}"
    if not removed:
        raise IdentityError(f"no pin for {where} in {path}")
    click.echo(f"forgot {where}: removed {len(removed)} pin(s) from {path}")
