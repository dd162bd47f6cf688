"""Imports point down only, counting imports inside functions and under TYPE_CHECKING: the
storage package imports nothing from the layers above it (server, client, cli), the server
imports nothing from client or cli, and no module of storage or server is part of an import
cycle (the listener/session/classic cycle this replaced hid behind function-level imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import tether

SRC = Path(tether.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every tether module ``name`` imports, wherever in it the import stands. The package root
    (``tether``, for ``__version__``) is left out: every module sits below it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES and m != "tether"}


GRAPH = {name: _imports(name) for name in MODULES}


def _in(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if m == prefix or m.startswith(prefix + "."))


def test_storage_imports_nothing_above_it() -> None:
    above = ("tether.server", "tether.client", "tether.cli")
    wrong = {m: sorted(i for i in GRAPH[m] if i.startswith(above)) for m in _in("tether.storage")}
    assert not {m: i for m, i in wrong.items() if i}


def test_the_server_imports_neither_client_nor_cli() -> None:
    above = ("tether.client", "tether.cli")
    wrong = {m: sorted(i for i in GRAPH[m] if i.startswith(above)) for m in _in("tether.server")}
    assert not {m: i for m, i in wrong.items() if i}


def _reaches(start: str, goal: str) -> bool:
    seen, todo = set(), list(GRAPH[start])
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
    return False


def test_no_storage_or_server_module_is_in_an_import_cycle() -> None:
    cyclic = [m for m in _in("tether.storage") + _in("tether.server") if _reaches(m, m)]
    assert not cyclic


def test_the_checker_sees_function_level_imports() -> None:
    """The walk is not fooled by an import inside a function (it would miss the old cycle)."""
    source = "def f():\n    from tether.server.listener import Server\n"
    tree = ast.parse(source)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "tether.server.listener"
               for n in ast.walk(tree))
    assert "tether.server.session" in GRAPH["tether.server.listener"]
