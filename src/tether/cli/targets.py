"""What a HOST on the command line means: one host (an address, or an inventory name resolved
to its address, port and keepalive) or several (the fleet path). Kept free of click, so that the
fast paths of the console script (:mod:`tether.cli.oneshot`) can ask it."""

from __future__ import annotations

import sys


def wants_fleet(host: str, home: str | None, per_host_output: bool = False) -> bool:
    """Whether HOST means the fleet path: several hosts (``a,b``, ``@group``) or per-host
    output asked for. One inventory name is one host: it keeps the one-host path (stdin,
    plain output), reached through :func:`one_host`."""
    from tether.inventory import is_multi

    del home  # a name alone never means several hosts
    return per_host_output or is_multi(host)


def one_host(host: str, home: str | None, port: int,
             keepalive: float = 0.0) -> tuple[str, int, float]:
    """For a command that reaches exactly one host (``tether shell``): an inventory name, or a
    target meaning one host, becomes its address (``user@address`` when the target names an
    account: ``tether.connect`` reads it), port and keepalive interval (``keepalive`` from the
    command line if given, else the host's own, else 0: off); a target meaning several is
    refused.
    """
    from tether.errors import BadRequest
    from tether.inventory import is_multi, load, resolve

    if not (is_multi(host) or _names_inventory_host(host, home)):
        return host, port, keepalive
    targets = resolve(host, load(home), port)
    if len(targets) != 1:
        raise BadRequest(f"{host} means {len(targets)} hosts; this command reaches one")
    (target,) = targets
    address = f"{target.user}@{target.address}" if target.user else target.address
    return address, target.port, keepalive or target.keepalive or 0.0


def inventory_via(host: str, home: str | None) -> list[str]:
    """The jump hosts an inventory host is reached through (its ``via``), if HOST is one."""
    from tether.inventory import InventoryError, load, names_inventory_host

    if "," in host or host.startswith("@"):
        return []
    name = host.rpartition("@")[2]
    try:
        if not names_inventory_host(name, home):
            return []
        return list(load(home).hosts[name].via)
    except InventoryError:
        return []  # one_host, asked next, warns or refuses


def _names_inventory_host(host: str, home: str | None) -> bool:
    """Whether HOST is an inventory name. A broken hosts.toml does not stop a plain IP
    address, which needs no inventory: it is warned about (once: this is asked once per
    command) and the address is used."""
    from tether.inventory import InventoryError, is_address, names_inventory_host

    try:
        return names_inventory_host(host, home)
    except InventoryError as exc:
        if not is_address(host):
            raise
        print(f"tether: warning: {exc} (not needed for the address {host}: "
              f"connecting to it)", file=sys.stderr)
        return False
