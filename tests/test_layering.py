"""The package's import graph, counting imports inside functions and under TYPE_CHECKING (a
function-level import hid the old cycles): every module belongs to a layer, no module imports
one from a higher layer, server and client never import each other, and no import cycle exists
anywhere in ``src/tether`` (docs/ARCHITECTURE.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tether

SRC = Path(tether.__file__).parent
MODULES = {
    ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in SRC.rglob("*.py")
}

# Lower numbers are lower layers: a module may import its own layer and those below it.
LAYERS = {
    "tether.errors": 0, "tether.version": 0, "tether.defaults": 0,
    "tether.protocol": 1, "tether.malloc": 1, "tether.home": 1, "tether.winacl": 1,
    "tether.identity": 2, "tether.ca": 2,
    "tether.tls": 3, "tether.hosttrust": 3, "tether.net": 3, "tether.storage": 3,
    "tether.inventory": 4, "tether.ansible_inventory": 4, "tether.syncing": 4,
    "tether.server": 5, "tether.client": 5,
    "tether.cli": 6,
    "tether": 7, "tether.__main__": 7,  # the package's public face and the console entry
}
# Same layer, still apart: the server and the client share only what lies below them.
APART = [("tether.server", "tether.client"), ("tether.client", "tether.server")]


def room(module: str) -> str:
    """The longest prefix of ``module`` that has a layer."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    raise KeyError(module)


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> set[str]:
    """The tether modules ``module`` imports anywhere in its text."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(node, module)
            subs = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= subs or {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & MODULES.keys() - {module}


GRAPH = {name: imports(name) for name in MODULES}


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for name in MODULES:
        try:
            room(name)
        except KeyError:
            unplaced.append(name)
    assert unplaced == [], "add these to LAYERS (and to docs/ARCHITECTURE.md)"


def test_no_module_imports_a_higher_layer() -> None:
    upward = {
        name: sorted(i for i in targets if LAYERS[room(i)] > LAYERS[room(name)])
        for name, targets in GRAPH.items()
    }
    assert {name: up for name, up in upward.items() if up} == {}


@pytest.mark.parametrize(("low", "high"), APART)
def test_server_and_client_stay_apart(low: str, high: str) -> None:
    crossing = {name: sorted(i for i in GRAPH[name] if room(i) == high)
                for name in GRAPH if room(name) == low}
    assert {name: c for name, c in crossing.items() if c} == {}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_only_the_console_script_imports_the_command_list() -> None:
    """Command modules share policy through cli/policy.py and cli/options.py, never cli/main."""
    assert sorted(m for m in GRAPH if "tether.cli.main" in GRAPH[m]) == ["tether.cli.oneshot"]


def test_the_walk_sees_imports_inside_functions() -> None:
    """The checker is not fooled by a function-level import (the old cycles hid behind them)."""
    assert "tether.server.session" in GRAPH["tether.server.listener"]
    sample = ast.parse("def f():\n    from tether.cli.main import main\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(sample))


def test_no_module_is_over_600_lines() -> None:
    """A module that outgrows 600 lines owns more than one thing: split it by what it owns."""
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > 600}
    assert long == {}
