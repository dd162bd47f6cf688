"""``tether run``'s options, written once: the table both front doors are made from — the click
options of ``run`` (:func:`click_options`, in :mod:`tether.cli.main`) and the one-shot fast
parser (:func:`fast_parse`, in :mod:`tether.cli.oneshot`) — and the one function that turns
parsed values into :class:`~tether.cli.shared.RunOptions` (:func:`run_options`).

An option marked ``fast`` is understood by the fast parser; an invocation using any other
(``--keepalive``, the fleet options), or a value the fast parser would have to word an error
for, goes to click, which parses the same table and words every usage error.

Light on purpose (the fast path imports it): no click here; :func:`click_options` imports it.
"""

from __future__ import annotations

import os

from tether.cli.shared import RunOptions, parse_env
from tether.defaults import DEFAULT_PORT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

FLAG, VALUE, MULTI = "flag", "value", "multi"


class Option:
    """One command-line option: its names, where its value goes, how it is read."""

    __slots__ = ("default", "dest", "directory", "envvar", "fast", "help", "kind", "metavar",
                 "minimum", "names", "show_default", "type")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str = VALUE, *,
                 type: Callable[[str], Any] = str, default: Any = None, help: str = "",
                 metavar: str | None = None, envvar: str | None = None,
                 minimum: float | None = None, directory: bool = False,
                 show_default: bool = False, fast: bool = True) -> None:
        self.names = names
        self.dest = dest
        self.kind = kind
        self.type = type
        self.default = default
        self.help = help
        self.metavar = metavar
        self.envvar = envvar
        self.minimum = minimum
        self.directory = directory
        self.show_default = show_default
        self.fast = fast

    def convert(self, text: str) -> Any:
        """The value of ``text``; ValueError if it is not one (click words that case)."""
        value = self.type(text)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{value} < {self.minimum}")
        return value


HOME = Option(("--home",), "home", envvar="TETHER_HOME", directory=True,
              help="Identity and trust directory [default: $TETHER_HOME or ~/.config/tether].")
PORT = Option(("-p", "--port"), "port", type=int, default=DEFAULT_PORT, show_default=True)
ACCEPT_NEW = Option(("--accept-new",), "accept_new", FLAG,
                    help="Trust and pin an unknown server's identity.")
PLAINTEXT = Option(("--plaintext",), "plaintext", FLAG,
                   help="Connect without TLS (a --plaintext server).")
KEEPALIVE = Option(
    ("--keepalive",), "keepalive", type=float, default=0.0, minimum=0, metavar="SECONDS",
    fast=False,  # the blocking client does not ping: click's path does
    help="Ping a server silent for this long; after 3 silent intervals give up (exit 255), "
         "like ssh's ServerAliveInterval [default: 0, off].")

# How to reach a server: every command that connects takes these.
CONNECT_OPTIONS = (HOME, PORT, ACCEPT_NEW, PLAINTEXT)

RUN_OPTIONS = (
    *CONNECT_OPTIONS,
    Option(("--cwd",), "cwd", help="Remote working directory (relative to the server's root)."),
    Option(("--env",), "env", MULTI, metavar="K=V", help="Set a remote variable."),
    Option(("--timeout",), "timeout", type=float,
           help="Kill the remote process group after S seconds."),
    Option(("--encoding",), "encoding",
           help="Decode remote output with this encoding and re-encode it for this side, also "
                "into pipes and files [default: the server's encoding, on a terminal only]."),
    Option(("-n", "--no-stdin"), "no_stdin", FLAG, help="Do not forward stdin (like ssh -n)."),
    KEEPALIVE,
)


# ``tether sync``'s own options (with CONNECT_OPTIONS and KEEPALIVE; fleet ones in cli/main.py).
SYNC_OPTIONS = (
    Option(("-n", "--dry-run"), "dry_run", FLAG,
           help="Print what would change, one line per entry, and change nothing."),
    Option(("--delete",), "delete", FLAG,
           help="Remove entries under DEST that the sources do not have (after the transfer; "
                "excluded entries are kept)."),
    Option(("--exclude",), "exclude", MULTI, metavar="PATTERN",
           help="Leave out what matches PATTERN (gitignore syntax)."),
    Option(("--include",), "include", MULTI, metavar="PATTERN",
           help="Keep what matches PATTERN even if an exclude matched it (a gitignore '!' "
                "line; includes come after excludes)."),
    Option(("--exclude-from",), "exclude_from", MULTI, metavar="FILE",
           help="Read exclude patterns from FILE (a .gitignore file; '!' lines include)."),
    Option(("-c", "--checksum"), "checksum", FLAG,
           help="Compare content hashes (BLAKE3) instead of size and modification time."),
    Option(("--safe-links",), "safe_links", FLAG,
           help="Skip symlinks that point outside the tree instead of refusing them."),
    Option(("-v", "--verbose"), "verbose", FLAG,
           help="Print what changed, one line per entry (as --dry-run does)."),
    Option(("--json",), "as_json", FLAG,
           help="Print one JSON object: sent, skipped, deleted, bytes_sent, bytes_matched, "
                "seconds, entries."),
    Option(("--progress",), "progress", FLAG, help="Show progress even when not a terminal."),
)


def run_options(values: dict[str, Any], host: str, command: Sequence[str]) -> RunOptions | None:
    """``run``'s parsed values as RunOptions (both parsers end here); None if an ``--env``
    item is not ``K=V`` (the caller words that usage error)."""
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    variables = parse_env(values.get("env") or ())
    if variables is None:
        return None
    return RunOptions(
        home=values.get("home") or None, host=host, port=values.get("port", DEFAULT_PORT),
        command=command, accept_new=bool(values.get("accept_new")),
        plaintext=bool(values.get("plaintext")), cwd=values.get("cwd"), env=variables,
        timeout=values.get("timeout"), encoding=values.get("encoding"),
        stdin=not values.get("no_stdin"), keepalive=values.get("keepalive") or 0.0,
    )


# --- the fast parser ----------------------------------------------------------------------------


def fast_parse(args: list[str], table: Sequence[Option] = RUN_OPTIONS) -> RunOptions | None:
    """``run``'s arguments (after ``run``) as RunOptions, or None for anything the fast parser
    leaves to click: an option not marked fast, a missing or bad value, no HOST, ``--help``."""
    by_name = {name: opt for opt in table if opt.fast for name in opt.names}
    values: dict[str, Any] = {}
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        arg = args[i]
        i += 1
        if arg == "--":
            break
        name, eq, text = arg.partition("=") if arg.startswith("--") else (arg[:2], "", arg[2:])
        opt = by_name.get(name)
        if opt is None:
            return None
        if opt.kind == FLAG:
            if eq or text:
                return None
            values[opt.dest] = True
            continue
        if eq and not text:
            return None  # an empty value: click decides
        if not eq and not text:
            if i >= len(args):
                return None
            text = args[i]
            i += 1
        try:
            value = opt.convert(text)
        except ValueError:
            return None
        if opt.kind == MULTI:
            values.setdefault(opt.dest, []).append(value)
        else:
            values[opt.dest] = value
    if i >= len(args):
        return None  # no HOST: a usage error, the click CLI words it
    for opt in table:
        if opt.dest not in values:
            env = os.environ.get(opt.envvar) if opt.envvar else None
            values[opt.dest] = opt.convert(env) if env else opt.default
    return run_options(values, args[i], args[i + 1:])


def identity_name(value: str | None) -> str | None:
    """A ``--name`` for an identity, checked before anything is made (a usage error, exit 2)."""
    if value is None:
        return None
    import click

    from tether.errors import IdentityError
    from tether.identity import check_identity_name

    try:
        return check_identity_name(value)
    except IdentityError as exc:
        raise click.BadParameter(str(exc)) from None


# --- the click options --------------------------------------------------------------------------


def click_options(table: Sequence[Option]) -> Callable[[Any], Any]:
    """A decorator adding ``table``'s options to a click command, in the table's order."""
    import click

    def one(opt: Option) -> Callable[[Any], Any]:
        kw: dict[str, Any] = {"help": opt.help or None, "metavar": opt.metavar}
        if opt.envvar:
            kw["envvar"] = opt.envvar
        if opt.kind == FLAG:
            return click.option(*opt.names, opt.dest, is_flag=True, **kw)
        if opt.kind == MULTI:
            return click.option(*opt.names, opt.dest, multiple=True, **kw)
        kind: Any = opt.type
        if opt.directory:
            kind = click.Path(file_okay=False)
        elif opt.minimum is not None:
            kind = click.FloatRange(min=opt.minimum)
        return click.option(*opt.names, opt.dest, type=kind, default=opt.default,
                            show_default=opt.show_default, **kw)

    def apply(func: Any) -> Any:
        for opt in reversed(table):
            func = one(opt)(func)
        return func

    return apply


__all__ = ["CONNECT_OPTIONS", "KEEPALIVE", "RUN_OPTIONS", "SYNC_OPTIONS", "Option", "click_options",
           "fast_parse", "identity_name", "run_options"]
