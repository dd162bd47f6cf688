"""``tether serve --metrics``: a real HTTP scrape, parsed with prometheus_client's own parser,
whose counters move with real traffic (commands, transfers, refusals, limits)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tether
from support import wait_until
from tether.errors import RemoteError

if TYPE_CHECKING:
    from conftest import Client, ClientHomeFactory, Marker, ServerFactory
    from support import ServeProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _metrics_url(server: ServeProcess) -> str:
    found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", server.log_text())
    assert found, server.log_text()
    return found.group(1)


def scrape(server: ServeProcess) -> Samples:
    with urllib.request.urlopen(_metrics_url(server), timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(make_server: ServerFactory) -> ServeProcess:
    return make_server("--metrics", "127.0.0.1:0", "--max-processes-per-client", "2")


async def test_counters_move_with_real_traffic(
    metered: ServeProcess, client: Client, make_client_home: ClientHomeFactory,
    mark: Marker, tmp_path: Path,
) -> None:
    before = scrape(metered)
    assert value(before, "tether_connections_open") == 0
    own = client.other(server=metered)

    assert own.run("true").returncode == 0
    assert own.run("exit 3").returncode == 3
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 300_000)
    async with tether.connect("127.0.0.1", metered.port, home=client.home) as conn:
        await conn.put(payload, "payload.bin")
        await conn.get("payload.bin", tmp_path / "back.bin")
        running = [await conn.start("sleep 30", env=mark.env) for _ in range(2)]
        mark.wait_for(2)
        during = scrape(metered)
        with pytest.raises(RemoteError, match="too many processes"):
            await conn.run("true")
        for proc in running:
            await proc.signal("KILL")
            await proc.wait()
    stranger = client.other(server=metered, home=make_client_home("stranger"))
    assert stranger.run("true", opts=["--accept-new"]).returncode == 255
    with socket.create_connection(("127.0.0.1", metered.port)) as sock:  # not TLS at all
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        sock.recv(100)

    def settled() -> bool:
        now = scrape(metered)
        return value(now, "tether_connections_open") == 0 and \
            value(now, "tether_handshakes_failed_total", reason="not_tls13") >= 1
    assert wait_until(settled, 15)
    after = scrape(metered)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "tether_connections_open") == 1
    assert value(during, "tether_processes_running") == 2
    fp = tether_fingerprint(client.home)
    assert value(during, "tether_processes", fingerprint=fp, client="e2e-client") == 2
    assert delta("tether_connections_total") == 3
    assert delta("tether_commands_finished_total", kind="command", outcome="success") == 1
    assert delta("tether_commands_finished_total", kind="command", outcome="failure") == 1
    assert delta("tether_commands_finished_total", kind="command", outcome="signal") == 2
    assert delta("tether_transfer_bytes_total", op="put") == 300_000
    assert delta("tether_transfer_bytes_total", op="get") == 300_000
    assert delta("tether_transfer_files_total", op="put") == 1
    assert delta("tether_transfer_duration_seconds_count", op="get") == 1
    assert delta("tether_limits_hit_total", limit="max_processes_per_client") == 1
    assert delta("tether_connections_refused_total", reason="not_authorized") == 1
    assert delta("tether_handshakes_failed_total", reason="not_authorized") == 1
    assert delta("tether_connections_refused_total", reason="not_tls13") == 1
    assert value(after, "tether_processes_running") == 0


def tether_fingerprint(home: Path) -> str:
    from tether.identity import load_identity

    return load_identity(home).fingerprint


def test_metrics_default_to_loopback_and_reject_garbage(cli: object, tmp_path: Path) -> None:
    run = cli  # the tether_cli fixture
    assert callable(run)
    done: subprocess.CompletedProcess[bytes] = run(
        "serve", "--metrics", "9799", "--check-config", home=tmp_path / "h")
    assert done.returncode == 0, done.stderr
    from tether.server.metrics import parse_address

    assert parse_address("9799") == ("127.0.0.1", 9799)
    assert parse_address("[::1]:9799") == ("::1", 9799)
    bad = run("serve", "--metrics", "here:there", "--check-config", home=tmp_path / "h")
    assert bad.returncode == 1 and b"expected ADDR:PORT" in bad.stderr


def test_the_client_never_imports_prometheus(tmp_path: Path) -> None:
    """The one-shot client and the API never load the metrics library."""
    code = ("import sys, tether, tether.cli.oneshot, tether.client.api; "
            "print('prometheus_client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.stdout == b"False\n", done.stderr
