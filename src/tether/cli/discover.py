"""``tether discover``: list the tether servers answering UDP probes, optionally adding them.

With ``--add`` every server found goes into the inventory (named after the server, or
``NAME-ADDRESS`` when that name already means another address). Its fingerprint is pinned into
known_hosts only when the user says yes on the terminal or passed ``--accept-new``: a discovery
reply is unauthenticated, so pinning it is a trust decision, the same one ssh asks about. A
fingerprint that differs from the pinned one is reported and never replaces it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from tether.cli.hosts import home_option
from tether.defaults import DEFAULT_PORT

if TYPE_CHECKING:
    from pathlib import Path

    from tether.client.discover import Found


@click.command()
@home_option
@click.argument("targets", nargs=-1, required=True, metavar="CIDR|ADDRESS...")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT,
              show_default=True, help="UDP port to probe (a server's TLS port number).")
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Probes sent again to silent addresses.")
@click.option("--wait", type=click.FloatRange(0.01, 30), default=0.5, show_default=True,
              metavar="S", help="Seconds to wait for answers after each round of probes.")
@click.option("--json", "as_json", is_flag=True, help="Print the servers found as JSON.")
@click.option("--add", "add", is_flag=True, help="Add the servers found to the inventory.")
@click.option("-g", "--group", "groups", multiple=True, metavar="G",
              help="With --add: put the added hosts in group G.")
@click.option("--accept-new", is_flag=True,
              help="With --add: pin every new fingerprint without asking.")
def discover(home: str | None, targets: tuple[str, ...], port: int, retries: int, wait: float,
             as_json: bool, add: bool, groups: tuple[str, ...], accept_new: bool) -> None:
    """Find tether servers (`tether serve --discoverable`) at the given networks or addresses.

    One small probe goes to each address (at most a /16 in all), lost ones are sent again
    --retries times; servers that answer are listed with name, fingerprint and version.
    Exit status 1 if none answered.
    """
    import asyncio

    from tether.client.discover import discover as probe
    from tether.identity import home_dir

    found = asyncio.run(probe(list(targets), port, retries=retries, wait=wait))
    h = home_dir(home)
    if as_json:
        _print_json(found, h)
    else:
        _print_found(found, h)
    if add and found:
        _add(found, h, groups, accept_new)
    if not found:
        from tether.errors import NotFound

        raise NotFound(f"no tether server answered on UDP port {port}")


def _trust(home: Path, f: Found) -> str:
    """``pinned``, ``new`` or ``CHANGED``: the fingerprint against known_hosts."""
    from tether.identity import lookup_known_host

    known = lookup_known_host(home, f.address, f.port)
    if known is None:
        return "new"
    return "pinned" if known == f.fingerprint else "CHANGED"


def _print_found(found: list[Found], home: Path) -> None:
    rows = [["ADDRESS", "PORT", "NAME", "FINGERPRINT", "VERSION", "TRUST"]]
    from tether.cli.escape import printable

    rows += [[printable(f.address), str(f.port), printable(f.name),
              printable(f.fingerprint) or "(plaintext)", printable(f.version), _trust(home, f)]
             for f in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows if found else []:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_json(found: list[Found], home: Path) -> None:
    import json
    from dataclasses import asdict

    click.echo(json.dumps([{**asdict(f), "trust": _trust(home, f)} for f in found]))


def _inventory_name(f: Found, taken: dict[str, tuple[str, int]]) -> str:
    """The server's own name if free (or already this address), else NAME-ADDRESS."""
    import re

    from tether.inventory import NAME_RE

    base = re.sub(r"[^A-Za-z0-9_.-]", "-", f.name).strip(".-")[:40] or "tether"
    if not NAME_RE.match(base):
        base = f"host-{base}"
    for name in (base, f"{base}-{f.address}".replace(":", "-")[:64]):
        if taken.get(name, (f.address, f.port)) == (f.address, f.port):
            return name
    return f"{base}-{f.address}-{f.port}".replace(":", "-")[:64]


def _add(found: list[Found], home: Path, groups: tuple[str, ...], accept_new: bool) -> None:
    from tether.cli.escape import printable
    from tether.identity import add_known_host
    from tether.inventory import Host, load, merge_groups, save

    inventory = load(home)
    by_place = {(h.address, h.port): h for h in inventory.hosts.values()}
    taken = {h.name: (h.address, h.port) for h in inventory.hosts.values()}
    ask = _Asker(accept_new)
    for f in found:
        host = by_place.get((f.address, f.port))
        if host is None:
            host = Host(_inventory_name(f, taken), f.address, f.port)
        inventory.add(merge_groups(host, groups))
        taken[host.name] = (f.address, f.port)
        trust = _trust(home, f)
        if trust == "CHANGED":
            click.echo(f"tether: {host.name} ({printable(f.address)}:{f.port}) presents a "
                       f"fingerprint different from the pinned one; NOT replacing it", err=True)
        elif trust == "new" and f.fingerprint and ask(host.name, f):
            add_known_host(home, f.address, f.port, f.fingerprint)
            click.echo(f"pinned {host.name} {printable(f.fingerprint)}")
        elif trust == "new" and f.fingerprint:
            click.echo(f"not pinned: {host.name} (connect with --accept-new, or run "
                       f"discover --add again and confirm)")
    path = save(inventory, home)
    click.echo(f"added {len(found)} host(s) to {path}")


class _Asker:
    """Whether to pin a new fingerprint: --accept-new, else ask on the terminal, else no."""

    def __init__(self, accept_new: bool) -> None:
        self.all = accept_new

    def __call__(self, name: str, f: Found) -> bool:
        if self.all:
            return True
        if not sys.stdin.isatty():
            return False
        from tether.cli.escape import printable

        answer = click.prompt(
            f"Pin {name} at {printable(f.address)}:{f.port}, fingerprint "
            f"{printable(f.fingerprint)}? "
            f"(check it with the server's admin) [yes/no/all]", default="no",
            show_default=False, err=True,
        ).strip().lower()
        if answer == "all":
            self.all = True
        return answer in ("y", "yes", "all")
