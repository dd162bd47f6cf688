"""``tether serve``'s configuration file: TOML, one top-level key per ``serve`` option.

A key has the option's long name (``max-connections = 100`` for ``--max-connections``), so the
file and ``tether serve --help`` never disagree: the keys are read off the click command itself.
Precedence: a flag on the command line (or ``TETHER_HOME`` in the environment) beats the file,
which beats the built-in default. A key that is unknown, or whose value has the wrong type or
fails the option's own check, is a :class:`~tether.errors.ConfigError` naming the file, the line
and the key (``tomllib`` reports no line numbers for keys, so :func:`line_of` finds them).

The same resolution runs again on SIGHUP (:func:`reloader`), with the original command line still
winning, so a reload can never undo a flag the admin typed.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from tether.errors import ConfigError

# Options that are actions of one invocation, not settings: they have no key in the file.
ACTIONS = frozenset({"config", "check_config", "rotate_key"})
FILE_NAME = "serve.toml"


@dataclass
class Resolved:
    """The effective options (by click parameter name) and where each came from."""

    values: dict[str, Any]
    path: Path | None
    sources: dict[str, str] = field(default_factory=dict)


def key_of(param: click.Parameter) -> str:
    """The file key of an option: its long flag without the dashes."""
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:] if longs else (param.name or "")


def settings(command: click.Command) -> dict[str, click.Option]:
    """Every option of ``command`` that is a setting, by file key."""
    return {key_of(p): p for p in command.params
            if isinstance(p, click.Option) and p.name not in ACTIONS and p.name != "help"}


def config_path(given: str | None, home: Path) -> Path | None:
    """``--config FILE``, else ``HOME/serve.toml`` when it exists, else no file."""
    if given:
        return Path(given)
    default = home / FILE_NAME
    return default if default.exists() else None


def line_of(text: str, key: str) -> int:
    """The line (from 1) where ``key`` is assigned at the top level, or 0 if not found."""
    quoted = re.escape(key)
    pattern = re.compile(rf"""^\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*=""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    for number, line in enumerate(text.splitlines(), 1):
        if key in line:
            return number
    return 0


def read_file(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed table and the text, or a ConfigError (TOML errors name their line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _type_error(param: click.Option, value: Any) -> str | None:
    """Why a TOML value cannot be this option's, before click's own conversion. A repeatable
    option (``--trust-ca``) takes an array of its values."""
    kind = param.type
    if param.multiple:
        if not isinstance(value, list):
            return f"expected an array ({_wanted(kind)} each)"
        problems = [_scalar_error(param, item) for item in value]
        return next((p for p in problems if p), None)
    return _scalar_error(param, value)


def _scalar_error(param: click.Option, value: Any) -> str | None:
    kind = param.type
    if param.is_flag:
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(value, bool | dict | list):
        return f"expected {_wanted(kind)}"
    if isinstance(kind, click.types.FloatParamType):
        return None if isinstance(value, int | float) else "expected a number"
    if isinstance(kind, click.types.IntParamType):
        return None if isinstance(value, int) else "expected an integer"
    return None if isinstance(value, str) else "expected a string"


def _wanted(kind: click.ParamType) -> str:  # type: ignore[type-arg]
    if isinstance(kind, click.types.FloatParamType):
        return "a number"
    if isinstance(kind, click.types.IntParamType):
        return "an integer"
    return "a string"


def convert(ctx: click.Context, param: click.Option, value: Any, where: str) -> Any:
    """``value`` as the option would have it from the command line, or a ConfigError."""
    problem = _type_error(param, value)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}, got {value!r}")
    if param.is_flag:
        return value
    try:  # the option's type, then its callback: the checks the command line gets
        return param.process_value(ctx, value)
    except click.BadParameter as exc:
        raise ConfigError(f"{where}: {exc.message}") from exc


def _source(ctx: click.Context, name: str) -> str:
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.ENVIRONMENT:
        return "environment"
    return "command line" if source is ParameterSource.COMMANDLINE else "default"


def resolve(ctx: click.Context, command: click.Command, values: dict[str, Any],
            path: Path | None) -> Resolved:
    """Merge the file at ``path`` (if any) under the command line's ``values``."""
    merged = dict(values)
    sources = {name: _source(ctx, name) for name in values}
    if path is None:
        return Resolved(merged, None, sources)
    table, text = read_file(path)
    options = settings(command)
    for key, value in table.items():
        line = line_of(text, key)
        where = f"{path}:{line}: key {key!r}" if line else f"{path}: key {key!r}"
        param = options.get(key)
        if param is None or param.name is None:
            raise ConfigError(f"{where}: unknown key (the keys are `tether serve` option "
                              f"names, e.g. max-connections)")
        converted = convert(ctx, param, value, where)
        if sources.get(param.name) == "default":
            merged[param.name] = converted
            sources[param.name] = f"{path}:{line}" if line else str(path)
    return Resolved(merged, path, sources)


def reloader(ctx: click.Context, command: click.Command, values: dict[str, Any],
             given: str | None, home: Path) -> Callable[[], Resolved]:
    """A function that resolves the configuration again (on SIGHUP): the file as it is now
    (``HOME/serve.toml`` may have appeared or gone, unless ``--config`` named one), under the
    same command line. ``values`` are the command line's, before any file."""
    frozen = dict(values)

    def again() -> Resolved:
        return resolve(ctx, command, dict(frozen), config_path(given, home))

    return again


def render(resolved: Resolved, command: click.Command) -> str:
    """The effective configuration as a TOML file (``tether serve --check-config``)."""
    where = resolved.path if resolved.path is not None else "no configuration file"
    lines = [f"# effective configuration ({where}); every key is a `tether serve` option"]
    for key, param in settings(command).items():
        assert param.name is not None
        value = resolved.values.get(param.name)
        origin = resolved.sources.get(param.name, "default")
        if value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {_toml(value)}  # {origin}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """``value`` as a TOML value: ``--check-config``'s output is a file ``--config`` reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    # JSON escapes every control character but DEL, with escapes TOML shares
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
