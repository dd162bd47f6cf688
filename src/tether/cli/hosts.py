"""``tether hosts``: list, add, remove and import the named hosts of ``$TETHER_HOME/hosts.toml``.

The data and its rules live in :mod:`tether.inventory`; this module only parses arguments and
prints (a rich table on a terminal, tab-separated columns otherwise, or JSON). Its top level
imports click alone: ``tether`` loads it at start-up to register the command.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from tether.cli.escape import printable
from tether.cli.options import HOME, click_options
from tether.defaults import DEFAULT_PORT

if TYPE_CHECKING:
    from tether.inventory import Host, Inventory

home_option = click_options([HOME])


@click.group(invoke_without_command=True)
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
@click.pass_context
def hosts(ctx: click.Context, home: str | None, as_json: bool) -> None:
    """List the inventory's hosts (or add and remove them: see the subcommands).

    Any HOST argument of run, put and get may be a name from here, a,b,c, @GROUP or @all.
    """
    if ctx.invoked_subcommand is not None:
        return
    from tether.inventory import inventory_path, load

    inventory = load(home)
    if as_json:
        _print_json(inventory)
    elif not inventory.hosts:
        click.echo(f"no hosts in {inventory_path(home)} (add one: tether hosts add NAME "
                   f"ADDRESS)", err=True)
    elif sys.stdout.isatty():
        _print_table(inventory)
    else:
        for host in inventory.hosts.values():
            click.echo("\t".join(_row(host)))


def _row(host: Host) -> list[str]:
    timeout = "" if host.timeout is None else f"{host.timeout:g}"
    return [printable(host.name), printable(host.address), str(host.port),
            printable(",".join(host.groups)), timeout]


def _print_table(inventory: Inventory) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("NAME", "ADDRESS", "PORT", "GROUPS", "TIMEOUT", box=None,
                  header_style="bold")
    for host in inventory.hosts.values():
        table.add_row(*_row(host))
    Console(highlight=False, markup=False).print(table)  # names are never markup


def _print_json(inventory: Inventory) -> None:
    import json

    click.echo(json.dumps([
        {"name": h.name, "address": h.address, "port": h.port, "groups": list(h.groups),
         "timeout": h.timeout, "keepalive": h.keepalive, "mux": h.mux}
        for h in inventory.hosts.values()
    ]))


@hosts.command("add")
@home_option
@click.argument("name")
@click.argument("address")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT,
              show_default=True)
@click.option("-g", "--group", "groups", multiple=True, metavar="G",
              help="Put the host in group G (repeat for several).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Per-host deadline for fleet operations, in seconds.")
@click.option("--keepalive", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Ping this host's server after S seconds of silence (as run --keepalive).")
@click.option("--user", default="", metavar="NAME",
              help="Run as this Unix account there (as user@host; the server must allow it).")
@click.option("--mux", type=click.Choice(["auto", "no"]), default=None,
              help="This host's default for --mux on run, shell, put and get NAME.")
def add(home: str | None, name: str, address: str, port: int, groups: tuple[str, ...],
        timeout: float | None, keepalive: float | None, user: str, mux: str | None) -> None:
    """Add NAME at ADDRESS (or replace the host called NAME)."""
    from tether.inventory import USER_RE, Host, add_host, inventory_path

    if user and not USER_RE.match(user):
        raise click.BadParameter(f"not a Unix account name: {user!r}", param_hint="--user")
    changed = add_host(home, Host(name, address, port, tuple(dict.fromkeys(groups)), timeout,
                                  keepalive, user, mux))
    state = "added" if changed else "unchanged"
    click.echo(f"{state}: {name} {address}:{port} in {inventory_path(home)}")


@hosts.command("remove")
@home_option
@click.argument("names", nargs=-1, required=True)
def remove(home: str | None, names: tuple[str, ...]) -> None:
    """Remove the hosts called NAMES (known_hosts keeps their fingerprints)."""
    from tether.inventory import load, save

    inventory = load(home)
    for name in names:
        inventory.remove(name)
    path = save(inventory, home)
    click.echo(f"removed {', '.join(names)} from {path}")


@hosts.command("import")
@home_option
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT,
              show_default=True,
              help="tether's port for hosts with no tether_port (ansible_port is ssh's port, "
                   "used only for hosts whose ansible_connection is tether).")
@click.option("-g", "--group", "groups", multiple=True, metavar="G",
              help="Also put every imported host in group G (repeat for several).")
@click.option("-n", "--dry-run", is_flag=True, help="Print what would be imported; write nothing.")
def import_(home: str | None, path: str, port: int, groups: tuple[str, ...],
            dry_run: bool) -> None:
    """Add (or replace) every host of an Ansible inventory FILE (INI or YAML).

    Names, ansible_host, groups (children included) and ports are taken; hosts already in the
    inventory under other names are kept.
    """
    from tether.ansible_inventory import read
    from tether.inventory import inventory_path, load, merge_groups, save

    imported = read(path, port)
    inventory = load(home)
    changed = 0
    for host in imported.hosts:
        host = merge_groups(host, groups)
        if inventory.hosts.get(host.name) != host:
            changed += 1
            inventory.add(host)
        if dry_run:
            click.echo("\t".join(_row(host)))
    if imported.ssh_ports_ignored:
        click.echo(f"note: ansible_port of {imported.ssh_ports_ignored} host(s) taken as ssh's "
                   f"port and not used (set tether_port, or --port)", err=True)
    found = len(imported.hosts)
    target = inventory_path(home)
    if dry_run:
        click.echo(f"would import {found} hosts ({changed} new or changed) into {target}",
                   err=True)
        return
    if changed:
        save(inventory, home)
    click.echo(f"imported {found} hosts ({changed} new or changed) into {target}")
