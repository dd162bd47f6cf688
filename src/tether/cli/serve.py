"""``tether serve``: create the server identity on first start, listen, log to stderr.

The command is loaded only when it runs (or ``tether --help`` lists it): its options come from
the server's :class:`~tether.server.limits.Limits`, which a client has no reason to import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tether.cli.options import HOME, LISTEN_PORT, click_options, identity_name
from tether.identity import authorized_path, generate_identity, home_dir, load_identity

if TYPE_CHECKING:
    from collections.abc import Callable

    from tether.identity import Identity
    from tether.server.classic import ClassicServer
    from tether.server.config import ClassicConfig, ServerConfig

DEFAULT_OVERLAP = 7 * 86400.0  # seconds: tether.server.rotation.DEFAULT_OVERLAP (not imported)


_LIMIT_FLAGS: list[tuple[str, type, str]] = [
    ("max_connections", int, "Connections at once, in total (0: derived from RLIMIT_NOFILE; "
                             "half may be in their handshake, the oldest is dropped)."),
    ("reserved_descriptors", int, "Descriptors kept free beyond connections and operations "
                                  "(accept bursts, the server's own files)."),
    ("max_connections_per_client", int, "Connections at once per client identity (0: half "
                                        "of max-connections)."),
    ("max_descriptors_per_client", int, "Descriptors one client identity's operations may hold "
                                        "at once (0: half of those left for operations)."),
    ("max_processes_per_client", int, "Commands and shells running at once per client."),
    ("max_streams_per_connection", int, "Operations at once on one connection."),
    ("max_pending_per_address", int, "Connections in their TLS handshake per address."),
    ("max_failures_per_address", int, "Failed handshakes per address per minute before it "
                                      "is refused until it is quiet."),
    ("handshake_timeout", float, "Seconds from TCP accept to an authenticated hello."),
    ("frame_timeout", float, "Seconds a started frame may take to arrive (slowloris)."),
    ("idle_timeout", float, "Close connections with no operation for this long (0: never)."),
    ("keepalive", float, "Ping a client silent for this long; after 3 such intervals it is gone "
                         "and its commands are killed (0: never)."),
    ("max_upload", int, "Largest file a put may store, in bytes (0: no limit)."),
    ("process_nproc", int, "RLIMIT_NPROC for commands: contains fork bombs (0: inherit)."),
    ("process_memory", int, "RLIMIT_AS for commands, in bytes (0: inherit)."),
    ("max_batches_per_connection", int, "Batches of small files stored at once on one "
                                        "connection (each holds up to 6 descriptors)."),
    ("max_fetches_per_client", int, "Fetches (batched gets of small files, each holding up "
                                    "to 8 MiB) at once per client identity; more wait."),
    ("max_buffered_per_client", int, "Bytes one client identity's connections may hold in "
                                     "memory at once (frames not yet handled, replies not yet "
                                     "sent, stdin a command has not read, batch data waiting "
                                     "for the disk); over it they stop reading (0: no limit)."),
    ("stall_timeout", float, "End a put or batch that receives no data for this long, "
                             "freeing what it holds (0: never)."),
    ("disk_threads", int, "Threads for long file work off the event loop (resume hashing, "
                          "fsync, a batch's small files, a get's and a fetch's reads)."),
    ("disk_threads_per_client", int, "Of those, how many one client identity may use at once."),
    ("refusal_log_interval", float, "Seconds over which the refusals of one address are "
                                    "logged as one line with a count (0: a line each)."),
]


def limit_options(func: Any) -> Any:
    """One --flag per field of Limits, defaulting to the documented default."""
    from dataclasses import fields

    from tether.server.limits import Limits

    defaults = {f.name: f.default for f in fields(Limits)}
    for name, kind, text in reversed(_LIMIT_FLAGS):
        func = click.option(f"--{name.replace('_', '-')}", name, type=kind,
                            default=defaults[name], show_default=True, help=text)(func)
    return func


def _env_names(_ctx: click.Context, _param: click.Parameter,
               names: tuple[str, ...]) -> tuple[str, ...]:
    """``--pass-env`` names, checked (a click callback, so a configuration file's
    ``pass-env`` gets the same check, naming its line): no ``=``, no NUL, not empty."""
    for name in names:
        if not name or "=" in name or "\0" in name:
            raise click.BadParameter(f"wants a variable name, not {name!r}")
    return tuple(names)


@click.command()
@click.pass_context
@click_options([HOME])
@click.option("--config", "config", type=click.Path(dir_okay=False), metavar="FILE",
              help="Read settings from this TOML file (keys: these options' names) "
                   "[default: $TETHER_HOME/serve.toml when it exists]. Flags beat the file.")
@click.option("--check-config", is_flag=True,
              help="Validate the configuration, print the effective settings and exit.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: explicit on purpose).")
@click_options([LISTEN_PORT])
@click.option("--root", type=click.Path(file_okay=False, exists=True),
              help="Directory that relative paths resolve against [default: your home].")
@click.option("--name", callback=lambda _ctx, _param, value: identity_name(value),
              help="Server name shown to clients, at most 64 characters [default: hostname].")
@click.option("--encoding", help="Encoding of command output announced to clients "
                                 "[default: the locale's].")
@click.option("--plaintext", is_flag=True,
              help="No TLS and no authentication, for benchmarks; loopback addresses only.")
@click.option("--kill-grace", default=1.0, show_default=True, type=float,
              help="Seconds between SIGTERM and SIGKILL when killing a command's group.")
@click.option("--classic-port", type=int,
              help="Also serve the classic tutorial protocol (plain TCP: NO encryption, NO "
                   "authentication) on this port, loopback only; 0 picks a free port.")
@click.option("--classic-host", metavar="ADDR",
              help="Address for --classic-port [default: --host if loopback, else 127.0.0.1].")
@click.option("--i-understand-classic-is-unauthenticated", "classic_unsafe", is_flag=True,
              help="Allow a non-loopback --classic-host: anyone who reaches it runs commands.")
@click.option("--audit", type=click.Path(dir_okay=False),
              help="Append an audit log here: one JSON object per line and event.")
@click.option("--discoverable", is_flag=True,
              help="Answer `tether discover` probes over UDP on the same port number "
                   "(name, fingerprint and version; rate-limited, never amplified).")
@click.option("--drain", default=10.0, show_default=True, type=float,
              help="On SIGTERM, seconds running commands and transfers may take to finish "
                   "(new connections are refused meanwhile; a second SIGTERM ends at once).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines as text (journald-aware) or JSON objects.")
@click.option("--metrics", metavar="ADDR:PORT",
              help="Serve Prometheus metrics over HTTP here (a bare PORT means 127.0.0.1).")
@click.option("--rotate-key", is_flag=True,
              help="Start a key rotation first: a new server key, announced to clients "
                   "during --key-overlap, then used in place of the old one.")
@click.option("--key-overlap", default=DEFAULT_OVERLAP, show_default=True, type=float,
              help="Seconds a rotated key is announced before the old one is retired.")
@click.option("--pass-env", "pass_env", multiple=True, metavar="NAME", callback=_env_names,
              help="Also give commands this variable of the server's environment (repeatable); "
                   "they otherwise get a login-like one: HOME, USER, LOGNAME, SHELL, a default "
                   "PATH, the locale, then the client's --env.")
@click.option("--trust-ca", "trust_cas", multiple=True, metavar="CA_CERT",
              type=click.Path(exists=True, dir_okay=False),
              help="Admit clients whose certificate this CA signed, by their principals and "
                   "$TETHER_HOME/principals (repeatable).")
@click.option("--crl", type=click.Path(exists=True, dir_okay=False),
              help="The CAs' revocation list (re-read when it changes).")
@limit_options
def serve(ctx: click.Context, **options: Any) -> None:
    """Serve clients in the foreground; SIGHUP reloads, SIGTERM drains, Ctrl-C stops at once."""
    from tether.cli import serve_config
    from tether.errors import UsageError
    from tether.server.config import is_loopback

    given = options.pop("config")
    check, rotate = options.pop("check_config"), options.pop("rotate_key")
    if options["plaintext"] and not is_loopback(options["host"]):  # flags alone: a usage error
        raise UsageError(f"--plaintext is only allowed on a loopback address, not "
                         f"{options['host']}")
    # a ConfigError names the file, line and key; the exit policy (cli/policy.py) shows it
    path = serve_config.config_path(given, home_dir(options["home"]))
    resolved = serve_config.resolve(ctx, serve, options, path)
    server_config(resolved.values)  # every check a start makes, before anything starts
    if check:
        click.echo(serve_config.render(resolved, serve), nl=False)
        return
    again = serve_config.reloader(ctx, serve, options, given, home_dir(options["home"]))
    shape = [resolved.values["log_format"]]

    def reload() -> ServerConfig:
        """SIGHUP: the configuration again; the log format (not the server's) applied here."""
        values = again().values
        config = server_config(values)  # checked whole before anything changes
        if values["log_format"] != shape[0]:
            from tether.cli.serve_log import setup

            shape[0] = values["log_format"]
            setup(shape[0], debug=bool(os.environ.get("TETHER_DEBUG")))
            logging.getLogger("tether.server").info("log format is now %s", shape[0])
        return config

    serve_main(resolved.values, reload=reload, rotate=rotate)


def server_config(values: dict[str, Any]) -> ServerConfig:
    """The server's configuration from the resolved options; ConfigError if they don't fit."""
    from tether.errors import ConfigError
    from tether.server.config import ServerConfig, is_loopback
    from tether.server.limits import Limits

    v = values
    classic = _classic_config(v["host"], v["port"], v["classic_port"], v["classic_host"],
                              v["classic_unsafe"])
    if v["plaintext"] and not is_loopback(v["host"]):
        raise ConfigError(f"--plaintext is only allowed on a loopback address, not {v['host']}")
    if v["drain"] < 0:
        raise ConfigError("--drain must be 0 seconds or more")
    metrics = None
    if v["metrics"]:
        from tether.server.metrics import parse_address

        metrics = parse_address(v["metrics"])
    limit_names = {name for name, _, _ in _LIMIT_FLAGS}
    config = ServerConfig(
        home=home_dir(v["home"]), host=v["host"], port=v["port"], plaintext=v["plaintext"],
        kill_grace=v["kill_grace"], classic=classic,
        audit=Path(v["audit"]) if v["audit"] else None,
        limits=Limits(**{k: val for k, val in v.items() if k in limit_names}),
        discoverable=v["discoverable"], drain=v["drain"], metrics=metrics,
        pass_env=tuple(v["pass_env"]),
        trust_cas=tuple(Path(p) for p in v["trust_cas"]),
        crl=Path(v["crl"]) if v["crl"] else None,
    )
    if v["root"]:
        config.root = Path(v["root"]).resolve()
    if v["name"]:
        config.name = v["name"]
    if v["encoding"]:
        config.encoding = v["encoding"]
    if config.trust_cas or config.crl:  # a bad CA or list is refused before anything is made
        from tether.errors import TetherError
        from tether.server.trust import Trust

        try:
            Trust(config.home, config.trust_cas, config.crl)
        except (TetherError, OSError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
    return config


def serve_main(values: dict[str, Any], reload: Callable[[], ServerConfig] | None = None,
               rotate: bool = False) -> None:
    """Start the server the resolved options describe and run it until it is stopped."""
    import signal

    from tether.cli.serve_log import announce, setup
    from tether.server import service

    # a hangup before the reload handler is installed is no reason to die (it would be taken
    # as a reload a moment later); the handler replaces this, so no command inherits it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup(values["log_format"], debug=bool(os.environ.get("TETHER_DEBUG")))
    config = server_config(values)  # the Server raises RLIMIT_NOFILE, then derives the limits
    inherited = service.inherited_sockets()  # a wrong one is an error before anything is made
    identity = None if config.plaintext else _server_identity(config, rotate,
                                                               values["key_overlap"])

    async def main() -> None:
        from dataclasses import replace

        from tether.server.listener import Server

        configured = replace(config)
        server = Server(config, identity)
        lifecycle = service.Lifecycle(server, reload, configured)
        lifecycle.install()  # before the "listening" line a script may wait for, then signal
        await server.start(inherited[0] if inherited else None)
        where = f"{server.config.host}:{server.port}"  # an inherited socket's, too
        if identity is not None:
            announce("listening on %s, fingerprint %s", where, identity.fingerprint)
            if not server.authorized() and not server.trust.cas:
                announce("no client is authorized yet, so nobody can connect: run `tether id` "
                         "on a client, then here `tether authorize 'LINE'` (into %s)",
                         authorized_path(config.home))
        else:
            announce("listening on %s in PLAINTEXT (no TLS, no authentication)", where)
        if inherited:
            announce("using the listening socket the service manager passed (%d given)",
                     len(inherited))
        if server.classic is not None:
            announce("classic protocol on %s (no TLS, no authentication)",
                     _classic_where(server.classic))
        if server.discovery is not None:
            announce("answering discovery probes on UDP %s", where)
        service.notify(f"READY=1\nSTATUS=listening on {where}\nMAINPID={os.getpid()}")
        await lifecycle.run()
        announce("stopped")

    _default_signals()
    _tune_asyncio()
    asyncio.run(main())


def _server_identity(config: ServerConfig, rotate: bool, overlap: float) -> Identity:
    """The server identity, created on first start; ``--rotate-key`` starts a rotation."""
    from tether.cli.serve_log import announce
    from tether.server.rotation import retire_if_due, start_rotation

    h = config.home
    retired = retire_if_due(h)
    if retired:
        announce("key rotation ended while stopped: the server key is now %s", retired)
    if not (h / "server_key.pem").exists():
        identity = generate_identity(h, (config.name or socket.gethostname())[:64], "server")
        announce("created server identity in %s", h)
    else:
        identity = load_identity(h, "server")
    if rotate:
        pending = start_rotation(h, overlap)  # a rotation under way: ConfigError, exit 1
        announce("key rotation started: next key %s, announced to clients for %gs",
                 pending.fingerprint, overlap)
    return identity




def _default_signals() -> None:
    """Commands inherit ignored signals: a server started in the background of a script has
    SIGQUIT (and maybe SIGCHLD) ignored, which its users' shells and jobs must not. SIGHUP is
    the server's own (a reload, server/service.py), so ``nohup tether serve`` survives a hangup
    as before."""
    import signal

    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


def _tune_asyncio() -> None:
    """Three measured settings for a long-running server (docs/benchmarks.md):

    - a pidfd child watcher (Linux, Python < 3.12, where the default starts a thread per
      child): ~12% less CPU per command;
    - glibc's malloc keeps ~1 MiB transfer buffers on the heap (``tether.malloc``): ~30 %
      less CPU sending a large file;
    - a 64 KiB TLS read buffer instead of asyncio's 256 KiB per connection: 1,000 idle
      connections take ~125 MiB instead of ~314 MiB, bulk throughput unchanged within noise.
      ``SSLProtocol.max_size`` is an undocumented class attribute, so this is a stopgap until
      the bulk path has a transport of its own.
    """
    import asyncio.sslproto
    import contextlib
    import warnings

    from tether.malloc import tune_for_bulk

    if sys.platform == "linux" and sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        with warnings.catch_warnings(), contextlib.suppress(OSError, AttributeError):
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    if hasattr(asyncio.sslproto.SSLProtocol, "max_size"):
        asyncio.sslproto.SSLProtocol.max_size = 64 * 1024
    tune_for_bulk()


def _classic_config(host: str, port: int, classic_port: int | None, classic_host: str | None,
                    unsafe: bool) -> ClassicConfig | None:
    """The classic listener's config; ConfigError (exit status 1) if the settings are wrong."""
    from tether.errors import ConfigError, TetherError
    from tether.server.config import classic_config

    if classic_port is None:
        if classic_host is not None:
            raise ConfigError("--classic-host needs --classic-port")
        return None
    try:
        return classic_config(host, port, classic_port, classic_host, unsafe)
    except TetherError as exc:
        raise ConfigError(str(exc)) from exc


def _classic_where(classic: ClassicServer) -> str:
    host = classic.config.host
    return f"[{host}]:{classic.port}" if ":" in host else f"{host}:{classic.port}"
