"""Reading an Ansible inventory (INI or YAML) into tether's hosts, for ``tether hosts import``.

A fleet that Ansible already knows should be named in tether with one command. What is taken
from the inventory, per host: its name, ``ansible_host`` (the address; the name when absent),
its groups (a group's ``children`` make their hosts members of the parent too) and its port. The
implicit groups ``all`` and ``ungrouped`` are not copied: tether's ``@all`` already means every
host.

The port needs a choice, because ``ansible_port`` is usually *ssh's* port: ``tether_port`` wins;
``ansible_port`` is used only for hosts whose ``ansible_connection`` is tether's plugin (then it
is tether's port); every other host gets the default port given by the caller, and the hosts
whose ``ansible_port`` was passed over are counted so the CLI can say so. Variables are
inherited as Ansible does: ``all``'s, then a group's (parents before children), then the host's.

Host patterns are expanded as Ansible expands them: ``web[01:03]`` is web01, web02, web03,
``db-[a:c]`` is db-a, db-b, db-c, and ``[1:9:2]`` takes a stride. Files only, no sockets; YAML
is read with PyYAML, imported only when a YAML file is read.
"""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import BadRequest
from tether.inventory import GROUP_ALL, Host, InventoryError, check_name, check_port

IMPLICIT_GROUPS = frozenset({GROUP_ALL, "ungrouped"})
MAX_EXPANSION = 100_000  # hosts one pattern may expand to: a typo must not eat the memory
_RANGE = re.compile(r"\[([^\]:]+):([^\]:]+)(?::(\d+))?\]")


@dataclass
class _Group:
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> its own vars
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Imported:
    """The hosts read from an inventory, in file order, and how many ports were passed over."""

    hosts: list[Host]
    ssh_ports_ignored: int = 0


def read(path: str | Path, default_port: int) -> Imported:
    """The hosts of the Ansible inventory file at ``path`` (INI or YAML, by its content)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InventoryError(f"cannot read {path}: {reason}") from exc
    groups = _parse_yaml(text, path) if _looks_like_yaml(path, text) else _parse_ini(text, path)
    return _hosts(groups, path, default_port)


def _looks_like_yaml(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".yml", ".yaml"):
        return True
    first = next((ln.strip() for ln in text.splitlines()
                  if ln.strip() and not ln.lstrip().startswith(("#", ";"))), "")
    return first.startswith("---") or (first.endswith(":") and not first.startswith("["))


# --- INI ----------------------------------------------------------------------------------------


def _parse_ini(text: str, path: Path) -> dict[str, _Group]:
    groups: dict[str, _Group] = {"ungrouped": _Group()}
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        where = f"{path}, line {number}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise InventoryError(f"{where}: a section header must end with ']'")
            section, _, kind = line[1:-1].strip().partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise InventoryError(f"{where}: unknown section kind {kind!r}")
            groups.setdefault(section, _Group())
            continue
        group = groups[section]
        if kind == "children":
            group.children.append(line.split()[0])
            groups.setdefault(line.split()[0], _Group())
        elif kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise InventoryError(f"{where}: expected KEY=VALUE in [{section}:vars]")
            group.vars[key.strip()] = _ini_value(value.strip())
        else:
            _ini_host_line(line, group, where)
    return groups


def _ini_host_line(line: str, group: _Group, where: str) -> None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise InventoryError(f"{where}: {exc}") from exc
    pattern, settings = words[0], words[1:]
    variables: dict[str, Any] = {}
    for word in settings:
        key, sep, value = word.partition("=")
        if not sep:
            raise InventoryError(f"{where}: expected KEY=VALUE after the host, got {word!r}")
        variables[key] = _ini_value(value)
    port = re.search(r":(\d+)$", pattern)
    head = pattern[: port.start()] if port else ""
    if port and head and ":" not in _RANGE.sub("", head):
        pattern = head  # "host:2222", Ansible's short form of ansible_port
        variables.setdefault("ansible_port", int(port.group(1)))
    for name in expand(pattern, where):
        group.hosts.setdefault(name, {}).update(variables)


def _ini_value(value: str) -> Any:
    """INI values as Ansible reads them for the keys that matter here: numbers are numbers."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return int(value) if value.isdigit() else value


# --- YAML ---------------------------------------------------------------------------------------


def _parse_yaml(text: str, path: Path) -> dict[str, _Group]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InventoryError(f"{path}: the top level must map group names to groups")
    groups: dict[str, _Group] = {}
    for name, body in data.items():
        _yaml_group(str(name), body, groups, path)
    return groups


def _yaml_group(name: str, body: Any, groups: dict[str, _Group], path: Path) -> None:
    group = groups.setdefault(name, _Group())
    if body is None:
        return
    if not isinstance(body, Mapping):
        raise InventoryError(f"{path}: group {name!r} must be a mapping")
    unknown = set(body) - {"hosts", "children", "vars"}
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise InventoryError(f"{path}: group {name!r}: unknown key {first!r}")
    hosts = _mapping(body.get("hosts"), f"group {name!r}: hosts", path)
    for pattern, variables in hosts.items():
        host_vars = _mapping(variables, f"host {pattern!r}", path)
        for host in expand(str(pattern), str(path)):
            group.hosts.setdefault(host, {}).update(host_vars)
    group.vars.update(_mapping(body.get("vars"), f"group {name!r}: vars", path))
    for child, child_body in _mapping(body.get("children"), f"group {name!r}: children",
                                      path).items():
        group.children.append(str(child))
        _yaml_group(str(child), child_body, groups, path)


def _mapping(value: Any, what: str, path: Path) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InventoryError(f"{path}: {what} must be a mapping")
    return value


# --- patterns and membership --------------------------------------------------------------------


def expand(pattern: str, where: str) -> list[str]:
    """A host pattern's names: ``[01:03]`` numeric (keeping the width), ``[a:c]`` letters."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    start, end, stride = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[: match.start()], pattern[match.end():]
    items = list(_range_items(start, end, stride, where, pattern))
    names = [name for item in items for name in expand(head + item + tail, where)]
    if len(names) > MAX_EXPANSION:
        raise InventoryError(f"{where}: {pattern!r} expands to more than {MAX_EXPANSION} hosts")
    return names


def _range_items(start: str, end: str, stride: int, where: str, pattern: str) -> Iterator[str]:
    if stride < 1:
        raise InventoryError(f"{where}: {pattern!r}: the stride must be at least 1")
    if start.isdigit() and end.isdigit():
        if int(end) - int(start) > MAX_EXPANSION * stride:
            raise InventoryError(f"{where}: {pattern!r} expands to too many hosts")
        width = len(start) if start.startswith("0") else 0
        for number in range(int(start), int(end) + 1, stride):
            yield str(number).zfill(width)
        return
    letters = string.ascii_letters
    if len(start) == len(end) == 1 and start in letters and end in letters:
        yield from letters[letters.index(start): letters.index(end) + 1: stride]
        return
    raise InventoryError(f"{where}: {pattern!r}: a range is [NUMBER:NUMBER] or [LETTER:LETTER]")


def _memberships(groups: dict[str, _Group]) -> dict[str, list[str]]:
    """Each host's groups, parents included (a child's host is a member of its parents),
    parents before children: the order in which their variables apply."""
    found: dict[str, list[str]] = {}
    depth: dict[str, int] = {}

    def visit(name: str, lineage: tuple[str, ...]) -> None:
        if name in lineage:
            return  # a cycle in children: Ansible refuses it too; membership is already known
        depth[name] = max(depth.get(name, 0), len(lineage))
        group = groups.get(name, _Group())
        for host in group.hosts:
            bucket = found.setdefault(host, [])
            bucket.extend(g for g in (*lineage, name) if g not in bucket)
        for child in group.children:
            visit(child, (*lineage, name))

    for name in groups:
        visit(name, ())
    return {host: sorted(chain, key=lambda g: depth[g]) for host, chain in found.items()}


def _host_vars(host: str, chain: list[str], groups: dict[str, _Group]) -> dict[str, Any]:
    merged: dict[str, Any] = dict(groups.get(GROUP_ALL, _Group()).vars)
    for name in chain:
        merged.update(groups[name].vars)
    for name in chain:
        merged.update(groups[name].hosts.get(host, {}))
    return merged


def _hosts(groups: dict[str, _Group], path: Path, default_port: int) -> Imported:
    result = Imported([])
    for host, chain in _memberships(groups).items():
        variables = _host_vars(host, chain, groups)
        port = default_port
        connection = str(variables.get("ansible_connection", ""))
        if "tether_port" in variables:
            port = variables["tether_port"]
        elif "ansible_port" in variables:
            if "tether" in connection:
                port = variables["ansible_port"]
            else:
                result.ssh_ports_ignored += 1
        try:
            check_name(host, "host name")
            for group in chain:
                if group not in IMPLICIT_GROUPS:
                    check_name(group, "group name")
            address = str(variables.get("ansible_host", host))
            if not address or any(ch.isspace() or not ch.isprintable() for ch in address):
                raise BadRequest(f"address {address!r} is not a host name or address")
            result.hosts.append(Host(host, address, check_port(port), tuple(
                g for g in chain if g not in IMPLICIT_GROUPS)))
        except (BadRequest, ValueError) as exc:
            raise InventoryError(f"{path}: host {host!r}: {exc}") from exc
    return result
