"""``tether authorize``: add, list and revoke the clients this server admits.

The rules of the file live in :mod:`tether.identity`; this module checks what an admin typed and
prints. A pasted line is verified whole (DER, Ed25519 key, self-signature) before anything is
written, because the server cannot admit a client whose certificate is damaged — and must not
let one damaged entry lock out the others. Names come from identity lines other people made:
they are escaped before they reach a terminal.
"""

from __future__ import annotations

import json
import sys

import click

from tether.cli.escape import printable
from tether.identity import (
    PERMISSIONS,
    AuthorizedClient,
    add_authorized,
    authorized_path,
    check_certificate,
    fingerprint,
    home_dir,
    load_authorized,
    parse_id_line,
    parse_permissions,
    revoke_authorized,
    short_fingerprint,
)


def add(home: str | None, id_line: str, name: str | None, root: str | None, allow: str,
        users: tuple[str, ...] = ()) -> None:
    der, line_name = parse_id_line(id_line)
    check_certificate(der)
    client = AuthorizedClient(der, name or line_name, root, parse_permissions(allow), users)
    h = home_dir(home)
    changed = add_authorized(h, client)
    state = "authorized" if changed else "already authorized"
    click.echo(f"{state}: {printable(client.name)} {fingerprint(der)} in {authorized_path(h)}")
    namesakes = [c for c in load_authorized(h).values()
                 if c.name == client.name and c.fingerprint != client.fingerprint]
    if namesakes:  # `user@hostname` from two machines with one host name
        others = ", ".join(short_fingerprint(c.fingerprint) for c in namesakes)
        click.echo(f"note: another authorized client is also named {printable(client.name)} "
                   f"({others}); the log and --list tell them apart by fingerprint, "
                   f"--name gives this one its own name", err=True)
    if root is None and {"put", "get"} & client.permissions:
        click.echo("note: without --root, put and get reach every file this server's account "
                   "can, so they can amount to exec (e.g. by writing ~/.bashrc)", err=True)


def show(home: str | None, as_json: bool) -> None:
    clients = list(load_authorized(home_dir(home)).values())
    if as_json:
        click.echo(json.dumps([_record(c) for c in clients]))
        return
    if not clients:
        click.echo(f"nobody is authorized in {authorized_path(home_dir(home))} "
                   f"(add a client: tether authorize 'LINE FROM ITS tether id')", err=True)
        return
    rows = [[printable(c.name), c.fingerprint, printable(c.root or "-"),
             ",".join(p for p in PERMISSIONS if p in c.permissions)] for c in clients]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("NAME", "FINGERPRINT", "ROOT", "PERMISSIONS", box=None,
                      header_style="bold")
        for row in rows:
            table.add_row(*row)
        Console(highlight=False, markup=False).print(table)
    else:
        for row in rows:
            click.echo("\t".join(row))


def _record(client: AuthorizedClient) -> dict[str, object]:
    record: dict[str, object] = {
        "name": client.name, "fingerprint": client.fingerprint, "root": client.root,
        "permissions": [p for p in PERMISSIONS if p in client.permissions]}
    if client.users:  # the Unix accounts it may use (authorize --user)
        record["users"] = list(client.users)
    return record


def revoke(home: str | None, who: str) -> None:
    h = home_dir(home)
    for client in revoke_authorized(h, who):
        click.echo(f"revoked: {printable(client.name)} {short_fingerprint(client.fingerprint)} "
                   f"from {authorized_path(h)} (from the next connection)")
