"""The server's limits, with their documented defaults, and the bookkeeping that enforces them
before a peer can cost much: per-address handshakes and failures, per-client connections and
processes. Every refusal comes with a one-line reason for the log, the audit log and the peer.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Limits:
    """Configurable limits (``tether serve --help`` lists the flags; docs/SECURITY.md why)."""

    max_connections: int = 0  # authenticated or not, in total (0: derived, see derive())
    reserved_descriptors: int = 128  # kept free for admitted clients' files (and accept bursts)
    max_connections_per_client: int = 0  # per client identity (0: half of max_connections)
    max_descriptors_per_client: int = 0  # held by one identity's operations (0: half of all)
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
    max_batches_per_connection: int = 16  # batches stored at once on one connection
    max_fetches_per_client: int = 8  # fetches holding their files at once, per identity
    max_buffered_per_client: int = 64 * 1024 * 1024  # bytes one identity's connections hold
    stall_timeout: float = 60.0  # end a put or batch that receives no data for this long (0: never)
    disk_threads: int = 4  # threads for long file work (resume hashing, fsync)...
    disk_threads_per_client: int = 2  # ...of which one client identity may use this many
    refusal_log_interval: float = 10.0  # one log/audit line per refused address per interval


MAX_DERIVED_CONNECTIONS = 4096
DESCRIPTORS_PER_CONNECTION = 2  # its socket, and the file of one operation
MIN_OPERATION_DESCRIPTORS = 64


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def raise_descriptor_limit() -> str:
    """Raise the soft RLIMIT_NOFILE to the hard one (most shells and units start a process at
    1024, far below what the kernel allows it) and say what was done, for the log. Commands
    inherit the raised limit (putting it back would need a preexec function, which makes every
    spawn a full fork: ten times slower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return f"soft RLIMIT_NOFILE {soft}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return f"soft RLIMIT_NOFILE {soft} (could not raise it to {target}: {exc})"
    return f"soft RLIMIT_NOFILE raised from {soft} to the hard limit {target}"


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 1 << 20


@dataclass(frozen=True)
class Derived:
    """The limits with every 0 ("derived") resolved, and the descriptors operations may hold."""

    limits: Limits
    operation_descriptors: int  # files, directories, pipes of all clients' operations at once
    note: str  # what was chosen, for the log


def derive(limits: Limits) -> Derived:
    """Resolve the derived limits from the descriptors the process may still open (soft
    RLIMIT_NOFILE less those open now and the reserve): each connection may hold its socket,
    the rest is for operations; one identity gets at most half of the connections and half of
    the operations' descriptors, so another can still get in."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    free = soft - open_descriptors() - limits.reserved_descriptors
    connections = limits.max_connections or max(
        8, min(MAX_DERIVED_CONNECTIONS, free // DESCRIPTORS_PER_CONNECTION))
    operations = max(MIN_OPERATION_DESCRIPTORS, free - connections)
    derived = replace(
        limits, max_connections=connections,
        max_connections_per_client=limits.max_connections_per_client or max(1, connections // 2),
        max_descriptors_per_client=limits.max_descriptors_per_client or operations // 2)
    how = "set" if limits.max_connections else f"derived from RLIMIT_NOFILE {soft}"
    note = (f"max-connections {connections} ({how}), {derived.max_connections_per_client} per "
            f"client; {operations} descriptors for operations, "
            f"{derived.max_descriptors_per_client} per client; reserve "
            f"{limits.reserved_descriptors}")
    return Derived(derived, operations, note)


@dataclass
class Admission:
    """Who is connected right now, and who failed recently."""

    limits: Limits
    connections: int = 0
    pending: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)
    processes: Counter[str] = field(default_factory=Counter)
    failures: dict[str, deque[float]] = field(default_factory=dict)

    @property
    def max_handshakes(self) -> int:
        """Handshakes at once from all addresses: half the connections, so that connections
        that never finish their handshake cannot hold every slot (the oldest is dropped)."""
        return max(1, self.limits.max_connections // 2)

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
