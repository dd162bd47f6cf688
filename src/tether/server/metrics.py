"""Prometheus metrics for ``tether serve --metrics ADDR:PORT`` (the ``prometheus_client`` package).

Two sources, so no counter can drift from what the server did:

- the audit events (:class:`~tether.server.audit.AuditLog` observers): connections refused by
  reason, handshakes failed, commands and shells finished by outcome, transfer bytes and
  durations, limits hit;
- the server's own bookkeeping, read at scrape time: connections open, processes running, per
  client identity.

Imported only by a server started with ``--metrics`` (never by the client). Each server has its
own registry, so two servers in one process (the tests) never share counters.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.identity import AuthorizedClient
    from tether.server.audit import AuditLog
    from tether.server.limits import Admission
    from tether.server.privsep import SharedCounts

    Authorized = Callable[[], dict[str, AuthorizedClient]]

log = logging.getLogger("tether.server")

# A refusal's reason (free text for the log) mapped to a bounded label: (prefix, limit or "").
_REFUSALS: list[tuple[str, str, str]] = [
    ("server full", "server_full", "max_connections"),
    ("too many handshakes at once", "handshakes_at_once", "max_pending_per_address"),
    ("too many failed handshakes", "failed_handshakes", "max_failures_per_address"),
    ("too many connections for this client", "client_connections",
     "max_connections_per_client"),
    ("TLS handshake timed out", "handshake_timeout", "handshake_timeout"),
    ("TLS handshake failed: client identity not authorized", "not_authorized", ""),
    ("TLS handshake failed: not a TLS 1.3 client", "not_tls13", ""),
    ("TLS handshake failed", "tls_error", ""),
    ("client identity", "not_authorized", ""),
    ("no client certificate", "not_authorized", ""),
    ("no hello in time", "handshake_timeout", "handshake_timeout"),
    ("client offered protocol versions", "version_mismatch", ""),
]
_HANDSHAKE_REASONS = frozenset({"handshake_timeout", "not_authorized", "not_tls13", "tls_error",
                                "version_mismatch"})
# Stream errors that are a limit: (prefix of the reason, limit).
_STREAM_LIMITS = [("too many processes", "max_processes_per_client"),
                  ("too many operations at once", "max_streams_per_connection"),
                  ("a file of", "max_upload")]
_DISCONNECT_LIMITS = [("idle for too long", "idle_timeout"), ("no answer from", "keepalive")]


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback) as (host, port); ConfigError if not."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics {text!r}: expected ADDR:PORT (e.g. 127.0.0.1:9722)")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ConfigError(f"--metrics {text!r}: {host!r} is not an IP address") from exc
    return host, int(port)


def _label(reason: str) -> tuple[str, str]:
    for prefix, label, limit in _REFUSALS:
        if reason.startswith(prefix):
            return label, limit
    return "other", ""


class _Live(Collector):
    """Gauges read from the server's bookkeeping at scrape time: the listener's own sessions
    (``admission``) and those its workers serve as other accounts (``counts``, shared with
    them, server/privsep.py)."""

    def __init__(self, admission: Admission, authorized: Authorized,
                 counts: SharedCounts | None = None) -> None:
        self.admission = admission
        self.authorized = authorized
        self.counts = counts

    def _processes(self) -> dict[str, int]:
        found = dict(self.admission.processes)
        if self.counts is not None:
            for key, slot in list(self.counts.slots.items()):
                if key.startswith("id "):
                    found[key[3:]] = found.get(key[3:], 0) + self.counts.value(slot)
        return {fp: n for fp, n in found.items() if n > 0}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        admission = self.admission
        processes = self._processes()
        yield GaugeMetricFamily("tether_connections_open", "Connections open now (in their "
                                "handshake or authenticated).", value=admission.connections)
        yield GaugeMetricFamily("tether_processes_running", "Commands and shells running now.",
                                value=sum(processes.values()))
        per = GaugeMetricFamily("tether_processes", "Commands and shells running now, per "
                                "client identity.", labels=["fingerprint", "client"])
        clients = self.authorized()
        for fp, count in sorted(processes.items()):
            client = clients.get(fp)
            per.add_metric([fp, client.name if client else ""], count)
        yield per


class Metrics:
    """The counters, fed by audit events."""

    def __init__(self, admission: Admission, authorized: Authorized,
                 counts: SharedCounts | None = None) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.connections = Counter("tether_connections", "Connections authenticated.",
                                   registry=reg)
        self.refused = Counter("tether_connections_refused", "Connections refused, by reason.",
                               ["reason"], registry=reg)
        self.handshakes_failed = Counter("tether_handshakes_failed",
                                         "TLS or tether handshakes that failed, by reason.",
                                         ["reason"], registry=reg)
        self.finished = Counter("tether_commands_finished", "Commands and shells that ended, "
                                "by kind and outcome.", ["kind", "outcome"], registry=reg)
        self.bytes = Counter("tether_transfer_bytes", "File bytes moved, by operation (put: "
                             "to the server, get: from it).", ["op"], registry=reg)
        self.files = Counter("tether_transfer_files", "Files moved, by operation.", ["op"],
                             registry=reg)
        self.durations = Histogram("tether_transfer_duration_seconds", "Time a single-file "
                                   "put or get took.", ["op"], registry=reg,
                                   buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800))
        self.limits = Counter("tether_limits_hit", "Times a configured limit refused or ended "
                              "something, by limit.", ["limit"], registry=reg)
        reg.register(_Live(admission, authorized, counts))

    def observe(self, kind: str, fields: dict[str, Any]) -> None:
        """One audit event."""
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, fields)

    def _connection(self, fields: dict[str, Any]) -> None:
        self.connections.inc()

    def _refused(self, fields: dict[str, Any]) -> None:
        label, limit = _label(str(fields.get("reason", "")))
        self.refused.labels(label).inc()
        if label in _HANDSHAKE_REASONS:
            self.handshakes_failed.labels(label).inc()
        if limit:
            self.limits.labels(limit).inc()

    def _process(self, kind: str, fields: dict[str, Any]) -> None:
        if "outcome" in fields:
            outcome = "not_started"
        elif fields.get("timed_out"):
            outcome = "timed_out"
        elif fields.get("signal"):
            outcome = "signal"
        elif fields.get("status") == 0:
            outcome = "success"
        else:
            outcome = "failure"
        self.finished.labels(kind, outcome).inc()

    def _transfer(self, fields: dict[str, Any]) -> None:
        op = str(fields.get("op", ""))
        self.bytes.labels(op).inc(max(0, int(fields.get("bytes", 0))))
        self.files.labels(op).inc()
        if "duration" in fields:
            self.durations.labels(op).observe(float(fields["duration"]))

    def _stream_error(self, fields: dict[str, Any]) -> None:
        reason = str(fields.get("reason", ""))
        for prefix, limit in _STREAM_LIMITS:
            if reason.startswith(prefix):
                self.limits.labels(limit).inc()

    def _disconnection(self, fields: dict[str, Any]) -> None:
        reason = str(fields.get("reason", ""))
        for prefix, limit in _DISCONNECT_LIMITS:
            if reason.startswith(prefix):
                self.limits.labels(limit).inc()
                return


_HANDLERS = {
    "connection": Metrics._connection,
    "refused": Metrics._refused,
    "command": lambda m, f: m._process("command", f),
    "shell": lambda m, f: m._process("shell", f),
    "transfer": Metrics._transfer,
    "stream_error": Metrics._stream_error,
    "disconnection": Metrics._disconnection,
}


class MetricsServer:
    """The HTTP endpoint (a thread of ``prometheus_client``'s own server) and its metrics."""

    def __init__(self, admission: Admission, authorized: Authorized, audit: AuditLog,
                 host: str, port: int, counts: SharedCounts | None = None) -> None:
        self.metrics = Metrics(admission, authorized, counts)
        self._http, self._thread = start_http_server(port, host, registry=self.metrics.registry)
        self.host, self.port = host, int(self._http.server_address[1])
        audit.observers.append(self.metrics.observe)
        log.info("metrics on http://%s/metrics",
                 f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}")

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)
