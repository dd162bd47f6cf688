"""The server's limits, with their documented defaults, and the bookkeeping that enforces them
before a peer can cost much: per-address handshakes and failures, per-client connections and
processes. Every refusal comes with a one-line reason for the log, the audit log and the peer.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """Configurable limits (``tether serve --help`` lists the flags; docs/SECURITY.md why)."""

    max_connections: int = 4096  # authenticated or not, in total
    max_connections_per_client: int = 1024  # per client identity
    max_processes_per_client: int = 256  # commands and shells running at once, per identity
    max_streams_per_connection: int = 64  # operations at once on one connection
    max_pending_per_address: int = 256  # connections still in their TLS handshake, per address
    max_failures_per_address: int = 30  # failed handshakes per address per failure_window...
    failure_window: float = 60.0  # ...after which that address is refused until it is quiet
    handshake_timeout: float = 10.0  # TCP accept to welcome
    frame_timeout: float = 60.0  # a started frame must complete by then (1 MiB: >= 17 KiB/s)
    idle_timeout: float = 0.0  # close a connection with no operation for this long (0: never)
    keepalive: float = 15.0  # ping a silent client after this long; 3 silent: gone (0: never)
    max_upload: int = 0  # bytes per uploaded file (0: no limit)
    process_nproc: int = 0  # RLIMIT_NPROC for commands (0: inherit)
    process_memory: int = 0  # RLIMIT_AS in bytes for commands (0: inherit)


@dataclass
class Admission:
    """Who is connected right now, and who failed recently."""

    limits: Limits
    connections: int = 0
    pending: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)
    processes: Counter[str] = field(default_factory=Counter)
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def admit_address(self, address: str) -> str | None:
        """A reason to refuse a new TCP connection from ``address`` now, or None (counted)."""
        lim = self.limits
        if self.connections >= lim.max_connections:
            return f"server full ({lim.max_connections} connections)"
        if self.pending[address] >= lim.max_pending_per_address:
            return f"too many handshakes at once from {address}"
        recent = self._recent_failures(address)
        if len(recent) >= lim.max_failures_per_address:
            return f"too many failed handshakes from {address}; try again later"
        self.connections += 1
        self.pending[address] += 1
        return None

    def handshake_ended(self, address: str, ok: bool) -> None:
        self.pending[address] -= 1
        if self.pending[address] <= 0:
            del self.pending[address]
        if not ok:
            self.failures.setdefault(address, deque()).append(time.monotonic())

    def connection_closed(self) -> None:
        self.connections -= 1

    def _recent_failures(self, address: str) -> deque[float]:
        recent = self.failures.get(address, deque())
        horizon = time.monotonic() - self.limits.failure_window
        while recent and recent[0] < horizon:
            recent.popleft()
        if not recent:
            self.failures.pop(address, None)
        return recent

    def admit_account(self, name: str) -> str | None:
        """Connections per Unix account (sessions mapped to it), counted beside the identity's."""
        key = f"account {name}"
        if self.clients[key] >= self.limits.max_connections_per_client:
            return f"too many connections for the account {name} ({self.clients[key]})"
        self.clients[key] += 1
        return None

    def account_left(self, name: str) -> None:
        self.client_left(f"account {name}")

    def admit_client(self, fingerprint: str) -> str | None:
        if self.clients[fingerprint] >= self.limits.max_connections_per_client:
            return f"too many connections for this client ({self.clients[fingerprint]})"
        self.clients[fingerprint] += 1
        return None

    def client_left(self, fingerprint: str) -> None:
        self.clients[fingerprint] -= 1
        if self.clients[fingerprint] <= 0:
            del self.clients[fingerprint]

    def admit_process(self, fingerprint: str) -> str | None:
        if self.processes[fingerprint] >= self.limits.max_processes_per_client:
            return f"too many processes for this client (limit " \
                   f"{self.limits.max_processes_per_client})"
        self.processes[fingerprint] += 1
        return None

    def process_ended(self, fingerprint: str) -> None:
        self.processes[fingerprint] -= 1
        if self.processes[fingerprint] <= 0:
            del self.processes[fingerprint]
