"""``tether`` commands: the command list and nothing else. Heavy modules are imported inside
each command, so that a one-shot ``tether run`` pays only for what it uses.

Commands return their exit status; errors propagate. How either becomes an exit status and a
line on stderr is decided in one place, :mod:`tether.cli.policy` (2 for usage errors, 1 for
configuration errors, 255 when the connection or authentication failed, 127 when the command
could not be started, 141 on a closed stdout, 130 on Ctrl-C). ``run``'s options come from the
option table in :mod:`tether.cli.options`, which the one-shot fast path parses too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from tether.cli.options import (
    CONNECT_OPTIONS,
    CONNECT_TIMEOUT_OPTION,
    FORWARD_OPTIONS,
    HOME,
    KEEPALIVE,
    MUX_OPTIONS,
    PORT,
    RUN_OPTIONS,
    SYNC_OPTIONS,
    VIA,
    click_options,
    host_command_class,
    identity_name,
    run_options,
)
from tether.cli.policy import run_command, status_of
from tether.defaults import DEFAULT_PARALLEL
from tether.version import __version__

# Commands whose modules load only when they are the one being run (start-up time counts).
LAZY_COMMANDS = {"hosts": "tether.cli.hosts", "discover": "tether.cli.discover",
                 "serve": "tether.cli.serve", "known-hosts": "tether.cli.known_hosts",
                 "service": "tether.cli.service", "rotate-key": "tether.cli.service",
                 "mux": "tether.cli.mux", "ca": "tether.cli.ca", "cert": "tether.cli.ca",
                 "trust-ca": "tether.cli.ca"}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            import importlib

            module = importlib.import_module(LAZY_COMMANDS[name])
            command: click.Command = getattr(module, name.replace("-", "_"))
            return command
        return super().get_command(ctx, name)

    # click turns a closed stdout into status 1 and Ctrl-C into "Aborted!": the exit policy
    # decides these before click sees them (--help is printed while making the context).

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except (BrokenPipeError, KeyboardInterrupt) as exc:
            sys.exit(status_of(exc))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BrokenPipeError, KeyboardInterrupt) as exc:
            sys.exit(status_of(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def cli(debug: bool) -> None:
    """Run commands on another machine and move files, over pinned mutual TLS."""
    if debug:
        os.environ["TETHER_DEBUG"] = "1"


home_option = click_options([HOME])


def warn_if_certificate_expires(home: str | os.PathLike[str] | None) -> None:
    """A client whose installed certificate expires within a day says so (run, shell, put, get;
    the one-shot path in cli/oneshot.py too)."""
    from tether.home import home_path
    from tether.hosttrust import expiry_warning

    warning = expiry_warning(home_path(home))
    if warning:
        click.echo(warning, err=True)


@cli.command()
@home_option
@click.option("--name", callback=lambda _ctx, _param, value: identity_name(value),
              help="A name for this identity, at most 64 characters [default: user@host].")
def keygen(home: str | None, name: str | None) -> None:
    """Create this user's identity (an Ed25519 key and certificate)."""
    import getpass
    import socket

    from tether.identity import generate_identity, home_dir

    default = f"{getpass.getuser()}@{socket.gethostname()}"[:64]
    ident = generate_identity(home_dir(home), name or default)
    click.echo(f"identity created in {ident.key_path.parent}")
    click.echo(f"fingerprint: {ident.fingerprint}")
    click.echo("give a server's admin the line `tether id` prints, to run: tether authorize 'LINE'")


@cli.command("id")
@home_option
@click.option("--server", is_flag=True, help="The server's identity (for `tether ca sign-host`).")
def id_(home: str | None, server: bool) -> None:
    """Print this user's public identity line (to give to a server).

    With a CA-signed certificate installed (`tether cert install`), the line holds it, and its
    serial, principals and expiry follow on stderr.
    """
    from tether.ca import certificate_summary
    from tether.identity import home_dir, load_identity

    identity = load_identity(home_dir(home), "server" if server else "client")
    click.echo(identity.id_line)
    summary = certificate_summary(identity.cert_der)
    if summary:
        click.echo(summary, err=True)


@cli.command()
@home_option
@click.argument("id_line", required=False)
@click.option("--name", help="Name to record for this client [default: the line's name].")
@click.option("--root", type=click.Path(file_okay=False, exists=True, resolve_path=True),
              help="Confine this client's file operations and commands' working directory here "
                   "(an existing directory; stored as an absolute path).")
@click.option("--allow", default="exec,shell,put,get,forward", show_default=True,
              help="Comma-separated permissions: exec (run commands), shell (interactive "
                   "shells), put (upload files), get (download files).")
@click.option("--list", "list_", is_flag=True,
              help="List the authorized clients: name, fingerprint, root, permissions.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print JSON.")
@click.option("--revoke", metavar="NAME|FINGERPRINT",
              help="Remove the client with this name or fingerprint (or its first 15 "
                   "characters, SHA256:xxxxxxxx).")
@click.option("--user", "users", multiple=True, metavar="NAME",
              help="A Unix account this client may use (user@host; repeatable, the first is "
                   "its default). Needs tether serve run as root.")
def authorize(home: str | None, id_line: str | None, name: str | None, root: str | None,
              allow: str, list_: bool, as_json: bool, revoke: str | None,
              users: tuple[str, ...]) -> None:
    """Let the client with ID_LINE (from its `tether id`) connect to this server.

    Takes effect for the next connection; no restart needed. Re-running it for the same identity
    replaces that client's name, root and permissions. --list shows who may connect; --revoke
    removes one client (connections already open stay open).
    """
    from tether.cli import authorize as impl

    modes = [bool(id_line), list_, revoke is not None]
    if sum(modes) != 1:
        raise click.UsageError("give one of: ID_LINE, --list, or --revoke NAME|FINGERPRINT")
    if list_:
        impl.show(home, as_json)
    elif revoke is not None:
        impl.revoke(home, revoke)
    else:
        assert id_line is not None
        impl.add(home, id_line, name, root, allow,
                 tuple(u for v in users for u in v.split(",") if u))


def fleet_options(run: bool) -> Callable[[Any], Any]:
    """The options every fleet-capable command takes (``run`` adds output and JSON ones); the
    fleet code itself (cli/fleet.py) loads only when a target means several hosts."""
    options = [
        click.option("--parallel", type=click.IntRange(min=1), default=DEFAULT_PARALLEL,
                     show_default=True, help="Hosts worked on at once (several hosts only)."),
        click.option("--host-timeout", type=click.FloatRange(min=0, min_open=True),
                     metavar="S", help="Give up on a host after S seconds, connecting "
                                       "included; beats a host's inventory timeout "
                                       "[default: the inventory's, else none]."),
    ]
    if run:
        options += [
            click.option("--group-output", is_flag=True,
                         help="Print each host's output in one piece when it finishes, "
                              "instead of prefixed lines as they arrive."),
            click.option("--json", "as_json", is_flag=True,
                         help="Print per-host results (status, output, error, duration) as "
                              "JSON on stdout."),
        ]

    def apply(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


keepalive_option = click_options([KEEPALIVE])


@cli.command(cls=host_command_class(), context_settings={"allow_interspersed_args": False})
@click_options(RUN_OPTIONS)
@fleet_options(run=True)
@click.argument("host")
@click.argument("command", nargs=-1)
def run(parallel: int, host_timeout: float | None, group_output: bool, as_json: bool,
        host: str, command: tuple[str, ...], **values: Any) -> int:
    """Run COMMAND on HOST: one argument goes through the remote shell, several run as argv.

    stdout and stderr stream back as produced; stdin is forwarded until EOF; the exit status is
    the remote one (128+N when killed by signal N, 124 on --timeout, 255 if the connection or
    authentication failed). Options may go before HOST or between HOST and the command, as
    with ssh: the command starts at -- or at the first word that is not an option.

    HOST may also name several hosts: an inventory name, a,b,c, @group or @all (see `tether
    hosts`). Then each output line is prefixed with its host, a summary goes to stderr, stdin
    is not forwarded, and the exit status is 0 only if every host succeeded (255 if any was
    unreachable, unauthorized or untrusted, else 124 if any timed out, else 1).
    """
    from tether.cli.run import run_main
    from tether.cli.shared import parse_env

    opts = run_options(values, host, command)
    warn_if_certificate_expires(values.get("home"))
    if opts is None:
        bad = next(item for item in values["env"] if parse_env([item]) is None)
        raise click.BadParameter(f"{bad!r} is not K=V", param_hint="--env")
    from tether.cli.fleet import FleetOptions, run_fleet
    from tether.cli.targets import wants_fleet

    if wants_fleet(host, opts.home, group_output or as_json):
        if opts.local_forwards or opts.remote_forwards or opts.dynamic_forwards or opts.via:
            from tether.errors import UsageError

            raise UsageError("-L, -R, -D and --via reach one host, not several")
        return run_fleet(opts, FleetOptions(parallel, host_timeout, group_output, as_json,
                                            opts.keepalive, opts.connect_timeout))
    from tether.cli.fleet import host_mux
    from tether.cli.targets import inventory_via, one_host

    opts.via = opts.via or inventory_via(host, opts.home)
    # an inventory name: its address, port, keepalive and mux setting
    opts.mux = host_mux(host, opts.home, opts.mux)
    opts.host, opts.port, opts.keepalive = one_host(host, opts.home, opts.port, opts.keepalive)
    return run_main(opts)


@cli.command(context_settings={"allow_interspersed_args": False})
@click_options(CONNECT_OPTIONS)
@click.option("-T", "--lines", is_flag=True,
              help="Line mode even on a terminal: one command per line, statuses reported.")
@keepalive_option
@click_options(MUX_OPTIONS)
@click_options([*FORWARD_OPTIONS, VIA])
@click.argument("host")
@click.argument("command", nargs=-1)
def shell(home: str | None, port: int, accept_new: bool, plaintext: bool,
          connect_timeout: float, lines: bool, keepalive: float, mux: str | None,
          mux_persist: float, local_forwards: tuple[str, ...],
          remote_forwards: tuple[str, ...], dynamic_forwards: tuple[str, ...],
          via: tuple[str, ...], host: str,
          command: tuple[str, ...]) -> int:
    """Open a shell on HOST (or run COMMAND in a terminal there, like ssh -t).

    On a terminal: a remote pseudo-terminal running your login shell; the local terminal is
    restored afterwards and the shell's exit status is yours. Otherwise (stdin a pipe or file):
    line mode, each line one command in one persistent shell, failures reported on stderr.
    Needs the `shell` permission on the server.
    """
    from tether.cli.forward import parse_specs
    from tether.cli.shell import shell_main
    from tether.cli.targets import inventory_via, one_host

    warn_if_certificate_expires(home)
    via = via or tuple(inventory_via(host, home))
    argv = list(command[1:] if command and command[0] == "--" else command)
    from tether.cli.fleet import host_mux

    specs = parse_specs(local_forwards, remote_forwards, dynamic_forwards)
    mode = host_mux(host, home, mux)
    host, port, keepalive = one_host(host, home, port, keepalive)  # an inventory name
    return shell_main(host, port, home, accept_new, plaintext, argv, lines, keepalive,
                      connect_timeout, (mode or "existing", mux_persist), specs, via)


@cli.command()
@click_options([*CONNECT_OPTIONS, *FORWARD_OPTIONS, VIA])
@keepalive_option
@click.argument("host")
def forward(home: str | None, port: int, accept_new: bool, plaintext: bool,
            connect_timeout: float, local_forwards: tuple[str, ...],
            remote_forwards: tuple[str, ...], dynamic_forwards: tuple[str, ...],
            via: tuple[str, ...], keepalive: float, host: str) -> int:
    """Forward ports through HOST until Ctrl-C, like ssh -N with -L, -R and -D.

    One line per listener on stdout (for -R 0:..., the port the server chose); one line on
    stderr per connection that fails (a refused destination closes its local socket at
    once). Needs the `forward` permission and the server's permits. Exit status 130 on
    Ctrl-C, 255 if the connection ends.
    """
    from tether.cli.forward import forward_main
    from tether.cli.targets import inventory_via, one_host

    warn_if_certificate_expires(home)
    via = via or tuple(inventory_via(host, home))
    host, port, keepalive = one_host(host, home, port, keepalive)
    return forward_main(host, port, home, accept_new, plaintext, keepalive, local_forwards,
                        remote_forwards, dynamic_forwards, via, connect_timeout)


@cli.command()
@click_options([*CONNECT_OPTIONS, VIA])
@keepalive_option
@click.argument("words", nargs=-1, required=True, metavar="[SERVER] HOST PORT")
def proxy(home: str | None, port: int, accept_new: bool, plaintext: bool,
          connect_timeout: float, via: tuple[str, ...], keepalive: float,
          words: tuple[str, ...]) -> int:
    """Connect stdin and stdout to HOST:PORT as the tether SERVER sees it, for ssh's
    ProxyCommand: ssh -o ProxyCommand='tether proxy bastion %h %p' internal.

    Without SERVER, the last --via host is the one that connects.
    """
    from tether.cli.forward import proxy_main

    if len(words) == 3:
        server, dest, dest_port = words
    elif len(words) == 2 and via:
        hops = [h for item in via for h in item.split(",") if h]
        server, via = hops[-1], tuple(hops[:-1])
        dest, dest_port = words
    else:
        raise click.UsageError("give SERVER HOST PORT (or HOST PORT with --via SERVER)")
    if not dest_port.isdigit() or not 0 < int(dest_port) < 65536:
        raise click.BadParameter(f"{dest_port!r} is not a port number", param_hint="PORT")
    warn_if_certificate_expires(home)
    return proxy_main(server, port, home, accept_new, plaintext, keepalive, dest,
                      int(dest_port), via, connect_timeout)


def transfer_options(func: Any) -> Any:
    """The options put and get share."""
    for option in reversed([
        home_option,
        click_options([PORT, CONNECT_TIMEOUT_OPTION, VIA]),
        click.option("-r", "--recursive", is_flag=True, help="Copy directory trees."),
        click.option("--force", is_flag=True, help="Replace existing destination files."),
        click.option("--rename", is_flag=True,
                     help="Store under a fresh name ('report (1).txt') if the name is taken."),
        click.option("--no-resume", is_flag=True,
                     help="Start over instead of continuing an interrupted transfer."),
        click.option("--progress", is_flag=True, help="Show progress even when not a terminal."),
        click.option("--safe-links", is_flag=True,
                     help="With -r, skip symlinks that point out of the tree (each one said); "
                          "by default symlinks are copied as symlinks, whatever they point to."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print a machine-readable summary on stdout."),
        click.option("--accept-new", is_flag=True, help="Trust and pin an unknown server."),
        click.option("--plaintext", is_flag=True, help="Connect without TLS."),
        keepalive_option,
        click_options(MUX_OPTIONS),
    ]):
        func = option(func)
    return func


def _transfer_opts(kw: dict[str, Any]) -> Any:
    from tether.cli.transfer_options import TransferOptions

    warn_if_certificate_expires(kw["home"])
    return TransferOptions(
        home=kw["home"], port=kw["port"], accept_new=kw["accept_new"],
        plaintext=kw["plaintext"], recursive=kw["recursive"], force=kw["force"],
        rename=kw["rename"], resume=not kw["no_resume"], progress=kw["progress"],
        json=kw["as_json"], parallel=kw["parallel"], host_timeout=kw["host_timeout"],
        keepalive=kw["keepalive"], safe_links=kw["safe_links"],
        connect_timeout=kw["connect_timeout"], mux=kw["mux"], mux_persist=kw["mux_persist"],
        via=tuple(kw["via"]),
    )


@cli.command()
@transfer_options
@fleet_options(run=False)
@click.argument("args", nargs=-1, required=True, metavar="LOCAL... HOST:REMOTE")
def put(args: tuple[str, ...], **kw: Any) -> int:
    """Upload LOCAL files (trees with -r) to REMOTE on HOST.

    A REMOTE that is a directory (or ends in /) receives files by name. Each file is hashed as
    it is sent (BLAKE3), written beside its destination, fsynced and renamed into place only
    when the hashes match; mode and mtime are kept. An interrupted upload resumes when run again.

    HOST may name several hosts (a,b, @group, @all, an inventory name): every one receives the
    same files, and a summary goes to stderr.
    """
    from tether.cli.transfer import put_main

    if len(args) < 2:
        raise click.UsageError("give at least one LOCAL and a HOST:REMOTE")
    return put_main(args[:-1], args[-1], _transfer_opts(kw))


@cli.command()
@transfer_options
@fleet_options(run=False)
@click.argument("args", nargs=-1, required=True, metavar="HOST:REMOTE... LOCAL")
def get(args: tuple[str, ...], **kw: Any) -> int:
    """Download REMOTE files (trees with -r) from HOST into LOCAL.

    Files land only under LOCAL, under names taken from your own arguments (a server cannot
    choose them). Verified, atomic and resumable like put.

    HOST may name several hosts (a,b, @group, @all, an inventory name): each host's files land
    in LOCAL/HOST/, and a summary goes to stderr.
    """
    from tether.cli.transfer import get_main

    return get_main(args, _transfer_opts(kw))


@cli.command(context_settings={"allow_interspersed_args": True})
@click_options((*CONNECT_OPTIONS, KEEPALIVE, *SYNC_OPTIONS))
@fleet_options(run=False)
@click.argument("args", nargs=-1, required=True, metavar="SRC... DEST")
def sync(args: tuple[str, ...], **values: Any) -> int:
    """Make DEST hold what SRC holds, sending only what changed (rsync's job).

    Push: SRC... HOST:DEST. Pull: HOST:SRC... DEST. SRC/ (a trailing slash) syncs the contents
    of SRC into DEST; SRC syncs the directory itself, into DEST/NAME. Files whose size and
    mtime (with -c: content hash) match are skipped; large changed files travel as deltas
    against the old copy; every file is verified (TLS, BLAKE3), made durable and moved into place
    atomically. Modes, mtimes and symlinks are kept.

    HOST may name several hosts (a,b, @group, @all, an inventory name) for a push: each gets
    the same tree, with a per-host summary. Exit status: 0 when everything is in sync, 1 if
    something failed or a source file changed while it was read (run again), 255 if a host
    could not be reached.
    """
    from tether.cli.sync import sync_main

    if len(args) < 2:
        raise click.UsageError("give at least one SRC and a DEST")
    return sync_main(list(args[:-1]), args[-1], values)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory and print its path.")
def demo(keep: bool) -> None:
    """Show tether working, with no setup: throwaway identities, a local server, a few commands."""
    from tether.cli.demo import demo_main

    demo_main(keep)




def main() -> NoReturn:
    """The click CLI, under the one exit policy (:func:`tether.cli.policy.run_command`)."""
    sys.exit(run_command(lambda: cli.main(prog_name="tether", standalone_mode=False)))


if __name__ == "__main__":
    main()
