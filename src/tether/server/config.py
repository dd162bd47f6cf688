"""What a server is told: :class:`ServerConfig` (the TLS listener) and :class:`ClassicConfig`
(the opt-in classic listener), with the address checks both make (:func:`is_loopback`).

Kept apart from the listener so that the listener, sessions and the classic server all import
their configuration from below, and none of them from each other's module.
"""

from __future__ import annotations

import ipaddress
import locale
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tether.defaults import DEFAULT_PORT
from tether.errors import TetherError
from tether.server.limits import Limits


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ClassicConfig:
    """Where the classic listener listens and the bounds it keeps (times in seconds)."""

    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False  # --i-understand-classic-is-unauthenticated
    timeout: float = 60.0  # one command, then its process group is killed
    idle_timeout: float = 300.0  # silence between requests
    read_timeout: float = 30.0  # silence inside a request (header, upload body, slow reader)
    max_file: int = 1 << 30  # largest upload accepted
    max_output: int = 16 << 20  # per output stream of one command; the rest is dropped
    max_connections: int = 64  # at once; more are closed on arrival


def classic_config(tls_host: str, tls_port: int, port: int, host: str | None,
                   allow_remote: bool) -> ClassicConfig:
    """The classic listener's config for ``tether serve``; TetherError explains a refusal.

    Without ``host`` it listens on the TLS host when that is a loopback address, else on
    127.0.0.1: the classic protocol is never exposed by accident.
    """
    if not 0 <= port <= 65535:
        raise TetherError(f"--classic-port {port} is not a port number")
    if port and port == tls_port:
        raise TetherError("--classic-port must differ from the TLS port")
    if host is None:
        host = tls_host if is_loopback(tls_host) and tls_host != "localhost" else "127.0.0.1"
    elif not is_loopback(host) and not allow_remote:
        raise TetherError(
            f"--classic-host {host} is not a loopback address and the classic protocol has no "
            f"authentication or encryption; add --i-understand-classic-is-unauthenticated"
        )
    return ClassicConfig(host=host, port=port, allow_remote=allow_remote)


@dataclass
class ServerConfig:
    home: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    root: Path = field(default_factory=Path.home)
    name: str = field(default_factory=socket.gethostname)
    encoding: str = field(default_factory=lambda: locale.getpreferredencoding(False))
    plaintext: bool = False
    kill_grace: float = 1.0
    limits: Limits = field(default_factory=Limits)
    audit: Path | None = None
    classic: ClassicConfig | None = None  # also serve the classic protocol (server/classic.py)
    discoverable: bool = False  # answer discovery probes over UDP, same port (server/discovery.py)
    drain: float = 10.0  # on SIGTERM, seconds running work may take to finish (server/service.py)
    metrics: tuple[str, int] | None = None  # serve Prometheus metrics here (server/metrics.py)
    pass_env: tuple[str, ...] = ()  # server variables commands get besides the login ones
    trust_cas: tuple[Path, ...] = ()  # admit clients these CAs signed (server/trust.py)
    crl: Path | None = None  # their revocation list, re-read when it changes
