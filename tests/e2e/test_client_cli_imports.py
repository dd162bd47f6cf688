"""The client and CLI layers' imports, counting imports inside functions and under
TYPE_CHECKING: no module of ``tether.client`` or ``tether.cli`` is part of an import cycle,
the client imports nothing from the CLI, and no command module imports ``tether.cli.main``
(the command list; its shared policy lives in ``cli/policy.py``, ``cli/options.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import tether

SRC = Path(tether.__file__).parent
MODULES = {
    ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in SRC.rglob("*.py")
}
MINE = sorted(m for m in MODULES if m.startswith(("tether.client.", "tether.cli.")))


def imports(name: str) -> set[str]:
    """The tether modules ``name`` imports anywhere in its text (the root package aside)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tether"):
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= subs or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tether.")}
    return {m for m in found & MODULES.keys() if m != "tether"}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in imports(todo.pop()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_client_or_cli_module_is_in_an_import_cycle() -> None:
    assert [m for m in MINE if m in reachable(m)] == []


def test_the_client_does_not_import_the_cli() -> None:
    client = [m for m in MINE if m.startswith("tether.client.")]
    assert {m: sorted(i for i in imports(m) if i.startswith("tether.cli."))
            for m in client if any(i.startswith("tether.cli.") for i in imports(m))} == {}


def test_only_the_console_script_imports_the_command_list() -> None:
    assert [m for m in MINE if "tether.cli.main" in imports(m)] == ["tether.cli.oneshot"]
