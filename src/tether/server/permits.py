"""Where a client may forward to and listen on: the server's forwarding policy
(``serve --permit-open``, ``--permit-listen``, ``--gateway-ports``; docs/SECURITY.md,
"Forwarding"), as sshd's ``PermitOpen``, ``PermitListen`` and ``GatewayPorts``.

- With no ``--permit-open``, an unconfined client may connect anywhere the server can reach;
  with some, only to what they name. A confined client (``root=`` in the authorized list) may
  connect only where a permit names, never anywhere by default.
- Listeners alike with ``--permit-listen``; and a listener binds loopback unless
  ``--gateway-ports``: another address is refused, with the reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tether.errors import ConfigError, PermissionDenied

ANY = "*"


@dataclass(frozen=True)
class Permit:
    """One ``HOST:PORT`` (``*`` for any host or any port) or one absolute Unix socket path."""

    host: str = ANY
    port: int | None = None  # None: any port
    path: str = ""

    def allows(self, host: str, port: int) -> bool:
        if self.path:
            return False
        return ((self.host == ANY or self.host.lower() == host.lower())
                and (self.port is None or self.port == port))

    def allows_path(self, path: str) -> bool:
        return bool(self.path) and self.path == path

    def __str__(self) -> str:
        if self.path:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{ANY if self.port is None else self.port}"


def parse_permit(text: str, listen: bool = False) -> Permit:
    """``HOST:PORT``, ``[V6]:PORT``, ``*:*``, an absolute socket path; for listeners also a
    bare ``PORT`` (any bind address) — ConfigError (exit 1) for anything else."""
    flag = "--permit-listen" if listen else "--permit-open"
    if text.startswith("/"):
        return Permit(path=text)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if not listen:
            raise ConfigError(f"{flag} {text!r}: write HOST:PORT (or an absolute socket path)")
        host, port_text = ANY, text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError(f"{flag} {text!r}: the host is empty (use * for any)")
    if port_text == ANY:
        return Permit(host, None)
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"{flag} {text!r}: {port_text!r} is not a port number or *")
    return Permit(host, int(port_text))


def is_loopback(host: str) -> bool:
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ForwardPolicy:
    """What this server lets clients forward (the ``forward`` permission comes first)."""

    permit_open: tuple[Permit, ...] = ()
    permit_listen: tuple[Permit, ...] = ()
    gateway_ports: bool = False

    def check_connect(self, host: str, port: int, path: str, confined: bool) -> None:
        """PermissionDenied unless the client may connect to ``host:port`` or ``path``."""
        where = path or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if self.permit_open:
            ok = any(p.allows_path(path) if path else p.allows(host, port)
                     for p in self.permit_open)
            if not ok:
                raise PermissionDenied(f"forwarding to {where} is not permitted by this server "
                                       f"(serve --permit-open)")
        elif confined:
            raise PermissionDenied(f"forwarding to {where}: this client is confined to its "
                                   f"root and the server permits it nowhere (serve "
                                   f"--permit-open)")

    def bind_address(self, host: str, port: int, path: str, confined: bool) -> str:
        """The address a listener binds (loopback for ``""``), or PermissionDenied."""
        if path:
            where = path
        else:
            if not self.gateway_ports and not is_loopback(host):
                raise PermissionDenied(f"this server binds listeners on loopback only, not "
                                       f"{host} (serve --gateway-ports)")
            host = "127.0.0.1" if host in ("", "localhost") else host
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.permit_listen:
            ok = any(p.allows_path(path) if path else
                     (p.port == port or p.port is None) and (
                         p.host in (ANY, host) or (is_loopback(p.host) and is_loopback(host)))
                     for p in self.permit_listen)
            if not ok:
                raise PermissionDenied(f"listening on {where} is not permitted by this server "
                                       f"(serve --permit-listen)")
        elif confined:
            raise PermissionDenied(f"listening on {where}: this client is confined to its "
                                   f"root and the server permits it nowhere (serve "
                                   f"--permit-listen)")
        return host
