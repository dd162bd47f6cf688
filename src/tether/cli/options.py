"""``tether run``'s options, written once: the table both front doors are made from — the click
options of ``run`` (:func:`click_options`, in :mod:`tether.cli.main`) and the one-shot fast
parser (:func:`fast_parse`, in :mod:`tether.cli.oneshot`) — and the one function that turns
parsed values into :class:`~tether.cli.shared.RunOptions` (:func:`run_options`).

An option marked ``fast`` is understood by the fast parser; an invocation using any other
(``--keepalive``, the fleet options), or a value the fast parser would have to word an error
for, goes to click, which parses the same table and words every usage error.

Where the command starts is decided once, as ssh decides it (:func:`split_host_command`):
tether's options may come before HOST or between HOST and the command, and the command starts
at ``--`` or at the first word after HOST that is not an option. Both front doors use it.

Light on purpose (the fast path imports it): no click here; :func:`click_options` imports it.
"""

from __future__ import annotations

import os

from tether.cli.shared import RunOptions, parse_env
from tether.defaults import CONNECT_TIMEOUT, DEFAULT_PORT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

FLAG, VALUE, MULTI = "flag", "value", "multi"


class Option:
    """One command-line option: its names, where its value goes, how it is read."""

    __slots__ = ("default", "dest", "directory", "envvar", "fast", "help", "kind", "maximum",
                 "metavar", "minimum", "names", "show_default", "type")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str = VALUE, *,
                 type: Callable[[str], Any] = str, default: Any = None, help: str = "",
                 metavar: str | None = None, envvar: str | None = None,
                 minimum: float | None = None, maximum: float | None = None,
                 directory: bool = False,
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
        self.maximum = maximum
        self.directory = directory
        self.show_default = show_default
        self.fast = fast

    def convert(self, text: str) -> Any:
        """The value of ``text``; ValueError if it is not one (click words that case)."""
        value = self.type(text)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{value} < {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{value} > {self.maximum}")
        return value


HOME = Option(("--home",), "home", envvar="TETHER_HOME", directory=True,
              help="Identity and trust directory [default: $TETHER_HOME or ~/.config/tether].")
PORT = Option(("-p", "--port"), "port", type=int, default=DEFAULT_PORT, show_default=True,
              minimum=1, maximum=65535, metavar="PORT",
              help="The server's TCP port, 1-65535 (an inventory host has its own).")
LISTEN_PORT = Option(("-p", "--port"), "port", type=int, default=DEFAULT_PORT,
                     show_default=True, minimum=0, maximum=65535, metavar="PORT",
                     help="The TCP port to listen on (0: any free port, printed at start).")
ACCEPT_NEW = Option(("--accept-new",), "accept_new", FLAG,
                    help="Trust and pin an unknown server's identity.")
PLAINTEXT = Option(("--plaintext",), "plaintext", FLAG,
                   help="Connect without TLS (a --plaintext server).")
CONNECT_TIMEOUT_OPTION = Option(
    ("--connect-timeout",), "connect_timeout", type=float, default=CONNECT_TIMEOUT,
    minimum=0.001, metavar="SECONDS", show_default=True,
    help="Give up if connecting, the TLS handshake and the server's welcome together take "
         "longer (one deadline, however slowly a server answers; exit 255).")
KEEPALIVE = Option(
    ("--keepalive",), "keepalive", type=float, default=0.0, minimum=0, metavar="SECONDS",
    fast=False,  # the blocking client does not ping: click's path does
    help="Ping a server silent for this long; after 3 silent intervals give up (exit 255), "
         "like ssh's ServerAliveInterval [default: 0, off].")

VIA = Option(
    ("-J", "--via"), "via", MULTI, metavar="HOST[,HOST...]", fast=False,
    help="Reach HOST through these tether servers in order (jump hosts, like ssh -J): TLS end "
         "to end, each hop only relays, each host pinned; HOST[:PORT] or inventory names.")
MUX = Option(
    ("--mux",), "mux", type=lambda text: _choice(text, ("auto", "no")), metavar="auto|no",
    help="auto: share one connection per host through tether mux (started on demand); no: "
         "connect directly [default: the inventory host's mux setting, else through this "
         "home's mux if one is running].")
MUX_PERSIST = Option(
    ("--mux-persist",), "mux_persist", type=float, default=60.0, minimum=0, metavar="SECONDS",
    show_default=True, help="Seconds a mux this command starts keeps an idle connection.")
MUX_OPTIONS = (MUX, MUX_PERSIST)

# How to reach a server: every command that connects takes these.
CONNECT_OPTIONS = (HOME, PORT, ACCEPT_NEW, PLAINTEXT, CONNECT_TIMEOUT_OPTION)

# Port forwarding (cli/forward.py parses the values), as ssh writes it.
FORWARD_OPTIONS = (
    Option(("-L",), "local_forwards", MULTI, metavar="[BIND:]PORT:DEST:DPORT", fast=False,
           help="Listen here on PORT (or /local.sock); connect to DEST:DPORT (or /remote.sock) "
                "from the server, like ssh -L (repeatable)."),
    Option(("-R",), "remote_forwards", MULTI, metavar="[BIND:]PORT:DEST:DPORT", fast=False,
           help="Listen on the server on PORT (0: it chooses, printed) or /remote.sock; "
                "connect to DEST:DPORT from here, like ssh -R (repeatable)."),
    Option(("-D",), "dynamic_forwards", MULTI, metavar="[BIND:]PORT", fast=False,
           help="A SOCKS5 proxy here on PORT whose connections leave from the server, which "
                "resolves the names, like ssh -D (repeatable)."),
)


def _choice(text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise ValueError(text)
    return text


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
    *MUX_OPTIONS,
    *FORWARD_OPTIONS,
    VIA,
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
    Option(("--no-hash-cache",), "no_hash_cache", FLAG,
           help="Read every file's content for -c, on both sides, instead of reusing the "
                "hashes of files unchanged (device, inode, size, mtime, ctime) since read."),
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
    command = list(command)  # its `--`, if any, went with the options (split_host_command)
    variables = parse_env(values.get("env") or ())
    if variables is None:
        return None
    return RunOptions(
        home=values.get("home") or None, host=host, port=values.get("port", DEFAULT_PORT),
        command=command, accept_new=bool(values.get("accept_new")),
        plaintext=bool(values.get("plaintext")), cwd=values.get("cwd"), env=variables,
        timeout=values.get("timeout"), encoding=values.get("encoding"),
        stdin=not values.get("no_stdin"), keepalive=values.get("keepalive") or 0.0,
        connect_timeout=values.get("connect_timeout") or CONNECT_TIMEOUT,
        mux=values.get("mux"), mux_persist=values.get("mux_persist", 60.0),
        local_forwards=values.get("local_forwards") or (),
        remote_forwards=values.get("remote_forwards") or (),
        dynamic_forwards=values.get("dynamic_forwards") or (), via=values.get("via") or (),
    )


# --- where the command starts -------------------------------------------------------------------

class UnknownOption(ValueError):
    """An option-looking word before the command that tether does not know."""


def _option_words(args: Sequence[str], i: int, kind_of: Callable[[str], str | None]) -> int:
    """How many words the option at ``args[i]`` takes (itself and its value, if separate).
    UnknownOption if tether has no such option."""
    arg = args[i]
    if arg.startswith("--"):
        name, eq, _ = arg.partition("=")
        kind = kind_of(name)
        if kind is None:
            raise UnknownOption(name)
        return 2 if kind != FLAG and not eq else 1
    for j in range(1, len(arg)):  # -n, -p7788, -np 7788: short options packed together
        kind = kind_of("-" + arg[j])
        if kind is None:
            raise UnknownOption("-" + arg[j])
        if kind != FLAG:
            return 1 if j + 1 < len(arg) else 2
    return 1


def is_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "-"


def split_host_command(args: Sequence[str], kind_of: Callable[[str], str | None]
                       ) -> tuple[list[str], str | None, list[str]]:
    """``run``'s arguments as (tether's option words, HOST, the command), the way ssh reads
    them: options before HOST and between HOST and the command are tether's; the command
    starts at ``--`` (dropped) or at the first word after HOST that is not an option.
    HOST is None when there is none. UnknownOption for an option tether does not know (ssh
    refuses it too: a command starting with ``-`` goes after ``--``)."""
    options: list[str] = []
    host: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            if host is not None or i >= len(args):
                break
            host = args[i]  # `run -- HOST ...`: the word after -- is the host
            i += 1
            continue
        if not is_option(arg):
            if host is not None:
                break
            host = arg
            i += 1
            continue
        n = _option_words(args, i, kind_of)
        options += args[i:i + n]
        i += n
    return options, host, list(args[i:])


def table_kinds(table: Sequence[Option]) -> Callable[[str], str | None]:
    """The lookup :func:`split_host_command` needs, for an option table."""
    kinds = {name: opt.kind for opt in table for name in opt.names}
    return kinds.get


# --- the fast parser ----------------------------------------------------------------------------


def fast_parse(args: list[str], table: Sequence[Option] = RUN_OPTIONS) -> RunOptions | None:
    """``run``'s arguments (after ``run``) as RunOptions, or None for anything the fast parser
    leaves to click: an option not marked fast, a missing or bad value, no HOST, ``--help``."""
    by_name = {name: opt for opt in table if opt.fast for name in opt.names}
    try:
        words, host, command = split_host_command(args, table_kinds(table))
    except UnknownOption:
        return None  # click words it (or knows it: a fleet option)
    if host is None:
        return None  # no HOST: a usage error, the click CLI words it
    values = _fast_values(words, by_name)
    if values is None:
        return None
    return run_options(_with_defaults(values, table), host, command)


SYNC_TABLE = (*CONNECT_OPTIONS, KEEPALIVE, *SYNC_OPTIONS)  # sync's, beside the fleet options


def fast_sync_parse(args: list[str]) -> tuple[list[str], dict[str, Any]] | None:
    """``sync``'s words (options anywhere, as click allows them there; ``--`` ends them) and
    option values, or None for anything the fast parser leaves to click: an option outside
    :data:`SYNC_TABLE` (``--help``, the fleet options), a missing or bad value."""
    by_name = {name: opt for opt in SYNC_TABLE for name in opt.names}
    words: list[str] = []
    given: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            words += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        long = arg.startswith("--")
        opt = by_name.get(arg.partition("=")[0] if long else arg[:2])
        if opt is None:
            return None
        given.append(arg)
        if opt.kind != FLAG and ((long and "=" not in arg) or (not long and len(arg) == 2)):
            if i >= len(args):
                return None
            given.append(args[i])
            i += 1
    values = _fast_values(given, by_name)
    if values is None:
        return None
    return words, _with_defaults(values, SYNC_TABLE)


def _with_defaults(values: dict[str, Any], table: Sequence[Option]) -> dict[str, Any]:
    """``values`` with every option of ``table`` not given: from its environment variable, else
    its default (no flag: False; no multiple option: an empty list), as click fills them."""
    for opt in table:
        if opt.dest not in values:
            env = os.environ.get(opt.envvar) if opt.envvar else None
            values[opt.dest] = opt.convert(env) if env else (
                [] if opt.kind == MULTI else False if opt.kind == FLAG else opt.default)
    return values


def _fast_values(args: list[str], by_name: dict[str, Option]) -> dict[str, Any] | None:
    """The option words' values, or None for anything the fast parser leaves to click."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
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
    return values


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
        if opt is MUX:
            kind = click.Choice(["auto", "no"])
        elif opt.directory:
            kind = click.Path(file_okay=False)
        elif opt.type is int and (opt.minimum is not None or opt.maximum is not None):
            kind = click.IntRange(min=opt.minimum, max=opt.maximum)  # type: ignore[arg-type]
        elif opt.minimum is not None or opt.maximum is not None:
            kind = click.FloatRange(min=opt.minimum, max=opt.maximum)
        return click.option(*opt.names, opt.dest, type=kind, default=opt.default,
                            show_default=opt.show_default, **kw)

    def apply(func: Any) -> Any:
        for opt in reversed(table):
            func = one(opt)(func)
        return func

    return apply


def host_command_class() -> Any:
    """A click command class for ``COMMAND [OPTIONS] HOST [OPTIONS] [--] ARGS...``: the
    options after HOST are moved before it (:func:`split_host_command`), so click parses them
    as tether's, and ``--`` is put before HOST so that nothing after it is taken for one."""
    import click

    class HostCommand(click.Command):
        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            if any(a in ctx.help_option_names for a in args[:1]):
                return super().parse_args(ctx, args)
            kinds: dict[str, str] = {}
            for param in self.get_params(ctx):
                if isinstance(param, click.Option):
                    kind = FLAG if param.is_flag else VALUE
                    kinds.update({name: kind for name in param.opts + param.secondary_opts})
            try:
                words, host, command = split_host_command(args, kinds.get)
            except UnknownOption as exc:
                raise click.NoSuchOption(
                    str(exc), message=f"No such option: {exc} (a command that starts with "
                                      f"'-' goes after --: tether run HOST -- COMMAND)",
                    ctx=ctx) from None
            rest = [] if host is None else ["--", host, *command]
            return super().parse_args(ctx, [*words, *rest])

    return HostCommand


__all__ = [
    "CONNECT_OPTIONS",
    "CONNECT_TIMEOUT_OPTION",
    "FORWARD_OPTIONS",
    "KEEPALIVE",
    "LISTEN_PORT",
    "MUX_OPTIONS",
    "PORT",
    "RUN_OPTIONS",
    "SYNC_OPTIONS",
    "SYNC_TABLE",
    "VIA",
    "Option",
    "click_options",
    "fast_parse",
    "fast_sync_parse",
    "host_command_class",
    "identity_name",
    "run_options",
    "split_host_command",
]
