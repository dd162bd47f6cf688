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
    from tether.server.classic import ClassicServer
    from tether.server.config import ClassicConfig
    from tether.server.limits import Limits
    from tether.server.permits import ForwardPolicy


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
    ("max_forwards_per_connection", int, "Forwarded connections (-L, -R, -D, --via) at once "
                                         "on one connection."),
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
    ("stall_timeout", float, "End a put or batch that receives no data for this long, "
                             "freeing what it holds (0: never)."),
    ("disk_threads", int, "Threads for long file work off the event loop (resume hashing, "
                          "fsync)."),
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


@click.command()
@click_options([HOME])
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
@click.option("--trust-ca", "trust_cas", multiple=True, metavar="CA_CERT",
              type=click.Path(exists=True, dir_okay=False),
              help="Admit clients whose certificate this CA signed, by their principals and "
                   "$TETHER_HOME/principals (repeatable).")
@click.option("--crl", type=click.Path(exists=True, dir_okay=False),
              help="The CAs' revocation list (re-read when it changes).")
@click.option("--permit-open", "permit_open", multiple=True, metavar="HOST:PORT",
              help="Clients may forward only to these destinations (repeatable; * for any "
                   "host or port; an absolute path for a Unix socket) [default: anywhere, "
                   "confined clients nowhere].")
@click.option("--permit-listen", "permit_listen", multiple=True, metavar="[BIND:]PORT",
              help="Clients may listen (-R) only on these ports (repeatable; 0 or * lets the "
                   "server choose; an absolute path for a Unix socket) [default: any port, "
                   "confined clients none].")
@click.option("--gateway-ports", is_flag=True,
              help="Let clients' listeners (-R) bind addresses other than loopback.")
@limit_options
def serve(home: str | None, host: str, port: int, root: str | None, name: str | None,
          encoding: str | None, plaintext: bool, kill_grace: float, classic_port: int | None,
          classic_host: str | None, classic_unsafe: bool, audit: str | None,
          discoverable: bool, trust_cas: tuple[str, ...], crl: str | None,
          permit_open: tuple[str, ...], permit_listen: tuple[str, ...], gateway_ports: bool,
          **limits: Any) -> None:
    """Serve clients in the foreground; Ctrl-C or SIGTERM stops it cleanly."""
    from tether.server.limits import Limits
    from tether.server.permits import ForwardPolicy, parse_permit

    forwarding = ForwardPolicy(tuple(parse_permit(p) for p in permit_open),
                               tuple(parse_permit(p, listen=True) for p in permit_listen),
                               gateway_ports)
    serve_main(home, host, port, root, name, encoding, plaintext, kill_grace,
               classic_port=classic_port, classic_host=classic_host,
               classic_unsafe=classic_unsafe, audit=audit, limits=Limits(**limits),
               discoverable=discoverable, trust_cas=tuple(Path(p) for p in trust_cas),
               crl=Path(crl) if crl else None, forwarding=forwarding)


def serve_main(home: str | None, host: str, port: int, root: str | None, name: str | None,
               encoding: str | None, plaintext: bool, kill_grace: float,
               classic_port: int | None = None, classic_host: str | None = None,
               classic_unsafe: bool = False, audit: str | None = None,
               limits: Limits | None = None, discoverable: bool = False,
               trust_cas: tuple[Path, ...] = (), crl: Path | None = None,
               forwarding: ForwardPolicy | None = None) -> None:
    from tether.server.limits import Limits
    from tether.server.listener import Server, ServerConfig

    if plaintext:
        from tether.errors import UsageError
        from tether.server.config import is_loopback

        if not is_loopback(host):  # refused before anything starts: a usage error
            raise UsageError(f"--plaintext is only allowed on a loopback address, not {host}")
    classic = _classic_config(host, port, classic_port, classic_host, classic_unsafe)

    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("TETHER_DEBUG") else logging.INFO,
        format="%(asctime)s tether %(levelname)s %(message)s", stream=sys.stderr,
    )
    h = home_dir(home)
    config = ServerConfig(home=h, host=host, port=port, plaintext=plaintext,
                          kill_grace=kill_grace, classic=classic,
                          audit=Path(audit) if audit else None, limits=limits or Limits(),
                          discoverable=discoverable, trust_cas=trust_cas, crl=crl)
    if forwarding is not None:
        config.forwarding = forwarding
    if root:
        config.root = Path(root).resolve()
    if name:
        config.name = name
    if encoding:
        config.encoding = encoding
    if trust_cas or crl:  # a bad CA or list is refused before anything is made
        from tether.server.trust import Trust

        Trust(h, trust_cas, crl)
    identity = None
    if not plaintext:
        if not (h / "server_key.pem").exists():
            identity = generate_identity(h, name or socket.gethostname()[:64], "server")
            click.echo(f"created server identity in {h}", err=True)
        else:
            identity = load_identity(h, "server")

    async def main() -> None:
        server = Server(config, identity)
        await server.start()
        where = f"{config.host}:{server.port}"
        if identity is not None:
            click.echo(f"tether serve: listening on {where}, fingerprint {identity.fingerprint}",
                       err=True)
            if not server.authorized() and not server.trust.cas:
                click.echo(f"tether serve: no client is authorized yet, so nobody can connect: "
                           f"run `tether id` on a client, then here `tether authorize "
                           f"'LINE'` (into {authorized_path(h)})", err=True)
        else:
            click.echo(f"tether serve: listening on {where} in PLAINTEXT (no TLS, no "
                       f"authentication)", err=True)
        if server.classic is not None:
            click.echo(f"tether serve: classic protocol on {_classic_where(server.classic)} "
                       f"(no TLS, no authentication)", err=True)
        if server.discovery is not None:
            click.echo(f"tether serve: answering discovery probes on UDP {where}", err=True)
        await server.serve_forever()
        click.echo("tether serve: stopped", err=True)

    _default_signals()
    _tune_asyncio()
    asyncio.run(main())


def _default_signals() -> None:
    """Commands inherit ignored signals: a server started in the background of a script has
    SIGQUIT (and maybe SIGCHLD) ignored, which its users' shells and jobs must not. SIGHUP is
    left alone (``nohup tether serve`` is deliberate)."""
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
