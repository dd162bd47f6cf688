"""The inventory: named hosts in ``$TETHER_HOME/hosts.toml``, and turning a target into hosts.

A target is what a user types where one HOST is accepted, so that one word can mean many::

    web1            a host named in the inventory (its address, port and settings)
    10.0.0.5        any other word is an address (or a DNS name) on the default port
    build@web1      either of those, as the Unix account "build" (the server's mapping allows it)
    a,b,c           several targets, each of the kinds here
    @web            every inventory host in the group "web"
    @all            every inventory host

:func:`resolve` returns :class:`Target` tuples (name, address, port, timeout, keepalive, user)
in the order given, without duplicates. The file is read with the standard library's
``tomllib`` and written by :func:`dump` in one small fixed format (no writer dependency),
atomically, so a crash never leaves half an inventory::

    [hosts.web1]
    address = "10.0.0.5"
    port = 7722
    groups = ["web", "eu"]
    timeout = 30.0          # optional per-host deadline in seconds (connect + operation)
    keepalive = 15.0        # optional: ping the server after this much silence (--keepalive)
    user = "build"          # optional: the Unix account to run as there (like user@host)
    mux = "auto"            # optional: share its connection through tether mux (--mux)

Pure files, no sockets: :mod:`tether.client.fleet` connects, :mod:`tether.cli.hosts` prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from tether.errors import BadRequest, ConfigError, IdentityError
from tether.identity import DEFAULT_PORT, home_dir

INVENTORY_FILE = "hosts.toml"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
GROUP_ALL = "all"
SETTINGS = ("timeout", "keepalive")  # optional per-host keys beside address, port and groups
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


class InventoryError(ConfigError, IdentityError):
    """hosts.toml is damaged or a name in it is not allowed (a local file problem: exit 1)."""


class Target(NamedTuple):
    """One host to reach: a display name, where it is, and its own deadline and keepalive
    interval if it has them."""

    name: str
    address: str
    port: int
    timeout: float | None = None
    keepalive: float | None = None
    user: str = ""  # the Unix account asked for ("": the server's choice)


@dataclass(frozen=True)
class Host:
    """One inventory entry."""

    name: str
    address: str
    port: int = DEFAULT_PORT
    groups: tuple[str, ...] = ()
    timeout: float | None = None
    keepalive: float | None = None
    user: str = ""
    mux: str | None = None  # "auto" or "no": this host's default for --mux

    def target(self) -> Target:
        return Target(self.name, self.address, self.port, self.timeout, self.keepalive,
                      self.user)


@dataclass
class Inventory:
    """Every named host, in file order (the order ``@all`` and ``tether hosts`` use)."""

    hosts: dict[str, Host] = field(default_factory=dict)

    def group(self, group: str) -> list[Host]:
        """The hosts of ``group``; ``all`` is every host."""
        if group == GROUP_ALL:
            return list(self.hosts.values())
        return [h for h in self.hosts.values() if group in h.groups]

    def groups(self) -> list[str]:
        return sorted({g for h in self.hosts.values() for g in h.groups})

    def add(self, host: Host) -> None:
        check_name(host.name, "host name")
        for group in host.groups:
            check_name(group, "group name")
            if group == GROUP_ALL:
                raise BadRequest("'all' is every host already; choose another group name")
        self.hosts[host.name] = host

    def remove(self, name: str) -> Host:
        try:
            return self.hosts.pop(name)
        except KeyError:
            raise BadRequest(f"no host named {name!r} in the inventory") from None


def check_name(name: str, what: str) -> None:
    """Names double as directory names (``tether get @web:… logs/`` writes ``logs/NAME/``) and
    appear in output prefixes, so they are kept to a safe, printable alphabet."""
    if not NAME_RE.match(name):
        raise BadRequest(
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            f"(at most 64, not starting with '.' or '-')"
        )


# --- the file -----------------------------------------------------------------------------------


def inventory_path(home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / INVENTORY_FILE


def load(home: str | os.PathLike[str] | None = None) -> Inventory:
    """The inventory in ``home``; an absent file is an empty inventory."""
    path = inventory_path(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Inventory()
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from exc
    return parse(text, str(path))


def parse(text: str, where: str = INVENTORY_FILE) -> Inventory:
    """Parse hosts.toml text; every error names the file and the host it is about."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{where}: {exc}") from exc
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise InventoryError(f"{where}: 'hosts' must be a table of [hosts.NAME] tables")
    inventory = Inventory()
    for name, entry in hosts.items():
        try:
            inventory.add(_host(name, entry))
        except (BadRequest, TypeError, ValueError) as exc:
            raise InventoryError(f"{where}: host {name!r}: {exc}") from exc
    return inventory


def _host(name: str, entry: Any) -> Host:
    if not isinstance(entry, Mapping):
        raise TypeError("must be a table")
    unknown = set(entry) - {"address", "port", "groups", "user", "mux", *SETTINGS}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    address = entry.get("address")
    if not isinstance(address, str) or not address:
        raise ValueError("'address' must be a non-empty string")
    groups = entry.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError("'groups' must be a list of strings")
    user = entry.get("user", "")
    if not isinstance(user, str) or (user and not USER_RE.match(user)):
        raise ValueError("'user' must be a Unix account name")
    mux = entry.get("mux")
    if mux is not None and mux not in ("auto", "no"):
        raise ValueError("'mux' must be \"auto\" or \"no\"")
    return Host(name, address, check_port(entry.get("port", DEFAULT_PORT)), tuple(groups),
                _seconds(entry, "timeout"), _seconds(entry, "keepalive"), user, mux)


def _seconds(entry: Mapping[str, Any], key: str) -> float | None:
    """An optional positive number of seconds (a bool is not a number here)."""
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{key!r} must be a positive number of seconds")
    return float(value)


def check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port {port!r} is not a TCP port (1-65535)")
    return port


def dump(inventory: Inventory) -> str:
    """The inventory as hosts.toml text, in the fixed format shown in the module docstring."""
    out = ["# tether inventory: `tether hosts add NAME ADDRESS [--port P] [--group G]...`\n"]
    for host in inventory.hosts.values():
        out.append(f"\n[hosts.{_key(host.name)}]\n")
        out.append(f"address = {_string(host.address)}\n")
        out.append(f"port = {host.port}\n")
        out.append(f"groups = [{', '.join(_string(g) for g in host.groups)}]\n")
        if host.timeout is not None:
            out.append(f"timeout = {host.timeout!r}\n")
        if host.keepalive is not None:
            out.append(f"keepalive = {host.keepalive!r}\n")
        if host.user:
            out.append(f"user = {_string(host.user)}\n")
        if host.mux is not None:
            out.append(f"mux = {_string(host.mux)}\n")
    return "".join(out)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


def _string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped."""
    escaped = []
    for ch in text:
        if ch in ('"', "\\"):
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def save(inventory: Inventory, home: str | os.PathLike[str] | None = None) -> Path:
    """Write hosts.toml atomically (temp file, fsync, rename)."""
    path = inventory_path(home)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{INVENTORY_FILE}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(dump(inventory))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def add_host(home: str | os.PathLike[str] | None, host: Host) -> bool:
    """Add or replace one host; False when the same entry was already there."""
    inventory = load(home)
    if inventory.hosts.get(host.name) == host:
        return False
    inventory.add(host)
    save(inventory, home)
    return True


def merge_groups(host: Host, groups: Iterable[str]) -> Host:
    extra = tuple(g for g in groups if g not in host.groups)
    return replace(host, groups=host.groups + extra) if extra else host


# --- targets ------------------------------------------------------------------------------------


def is_multi(spec: str) -> bool:
    """Whether ``spec`` has fleet syntax (``@group``, ``user@@group``, ``a,b``), without reading
    any file."""
    return "," in spec or split_user(spec)[1].startswith("@")


def split_user(spec: str) -> tuple[str, str]:
    """``build@web1`` as ("build", "web1"); a spec without an account as ("", spec)."""
    user, at, rest = spec.partition("@")
    if at and user and rest and not spec.startswith("@"):
        return user, rest
    return "", spec


def is_address(spec: str) -> bool:
    """Whether ``spec`` is an IP address literal (``[v6]`` too): a host no inventory names."""
    import ipaddress

    try:
        ipaddress.ip_address(spec[1:-1] if spec.startswith("[") and spec.endswith("]")
                             else spec)
    except ValueError:
        return False
    return True


def names_inventory_host(spec: str, home: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``spec`` (perhaps ``user@NAME``) is a name in the inventory (costs nothing when
    there is no file)."""
    spec = split_user(spec)[1]
    if not NAME_RE.match(spec):
        return False
    try:
        text = inventory_path(home).read_text()
    except OSError:
        return False
    return spec in text and spec in parse(text, str(inventory_path(home))).hosts


def resolve(spec: str | Iterable[str | Target], inventory: Inventory,
            port: int = DEFAULT_PORT) -> list[Target]:
    """Every host a target (or several) means, in order, each once (by name).

    Inventory hosts keep their own port; a bare address uses ``port``. An unknown ``@group``
    or an empty result is an error: a typo must not silently reach no host at all.
    """
    parts: list[str | Target] = (
        [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    )
    found: dict[str, Target] = {}
    for part in parts:
        for target in _resolve_one(part, inventory, port):
            found.setdefault(target.name, target)
    if not found:
        raise BadRequest(f"no hosts to reach in {spec!r}")
    return list(found.values())


def _resolve_one(part: str | Target, inventory: Inventory, port: int) -> list[Target]:
    if isinstance(part, Target):
        return [part]
    if not part:
        return []
    user, rest = split_user(part)
    if user:
        if not USER_RE.match(user):
            raise BadRequest(f"not a Unix account name: {user!r} (in {part!r})")
        return [t._replace(name=f"{user}@{t.name}", user=user)
                for t in _resolve_one(rest, inventory, port)]
    if part.startswith("@"):
        hosts = inventory.group(part[1:])
        if not hosts:
            known = ", ".join("@" + g for g in [GROUP_ALL, *inventory.groups()])
            raise BadRequest(f"no hosts in {part} (groups: {known}; see `tether hosts`)")
        return [h.target() for h in hosts]
    host = inventory.hosts.get(part)
    if host is not None:
        return [host.target()]
    address = part[1:-1] if part.startswith("[") and part.endswith("]") else part
    return [Target(part, address, port)]


__all__ = [
    "Host",
    "Inventory",
    "InventoryError",
    "Target",
    "add_host",
    "dump",
    "is_address",
    "is_multi",
    "load",
    "names_inventory_host",
    "parse",
    "resolve",
    "save",
]
