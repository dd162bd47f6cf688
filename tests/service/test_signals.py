"""Signals to a running ``tether serve``: SIGHUP reloads without touching running work (and keeps
the old configuration when the new one is wrong), SIGTERM drains, a second SIGTERM ends at once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tether
from hostile.proxy import Faults, Proxy
from support import wait_until
from tether.client.discover import discover
from trust.lab import Lab, ok
from trust.lab import tether as lab_tether

if TYPE_CHECKING:
    from conftest import Client, ClientHomeFactory, Marker, ServerFactory
    from support import ServeProcess

Cli = Callable[..., subprocess.CompletedProcess[bytes]]


def _logged(server: ServeProcess, text: str, after: int = 0, timeout: float = 15.0) -> bool:
    return wait_until(lambda: text in server.log_text()[after:], timeout)


def _until(go: Path, then: str) -> str:
    """A command that says start, waits for ``go`` to exist (at most 120 s), then ``then``."""
    return f"echo start; i=0; while [ ! -e '{go}' ] && [ $i -lt 1200 ]; do sleep 0.1; " \
           f"i=$((i+1)); done; {then}"


def _discovered(server: ServeProcess) -> list[str]:
    found = asyncio.run(discover(["127.0.0.1"], server.port, wait=0.3, retries=2))
    return [f.fingerprint for f in found]


async def _server_name(server: ServeProcess, client_home: Path) -> str:
    async with tether.connect("127.0.0.1", server.port, home=client_home) as conn:
        return conn.server.name


async def test_sighup_reloads_while_a_command_runs_and_refuses_a_bad_file(
    client: Client, make_server: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "hup"
    home.mkdir()
    config = home / "serve.toml"
    config.write_text('name = "before"\n')
    server = make_server(home=home)
    own = client.other(server=server)
    go = tmp_path / "go"  # the command runs until the test has reloaded twice
    proc = own.popen("sh", "-c", _until(go, "echo end; exit 7"),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"start\n"  # the command runs

    config.write_text('name = "after"\nmax-connections = 100\n')
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reloaded", seen), server.log_text()
    assert "configuration changed: name, limits" in server.log_text()[seen:]
    assert await _server_name(server, client.home) == "after"

    config.write_text('name = "broken"\nbogus = 1\n')
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reload refused", seen), server.log_text()
    refusal = next(line for line in server.log_text()[seen:].splitlines() if "refused" in line)
    assert f"{config}:2: key 'bogus': unknown key" in refusal
    assert "the running configuration is kept" in refusal
    assert await _server_name(server, client.home) == "after"

    assert proc.poll() is None, "the command should still be running across both reloads"
    go.touch()
    out, err = proc.communicate(timeout=30)
    assert (out, proc.returncode) == (b"end\n", 7), err
    assert server.alive()


async def test_sighup_reads_a_configuration_file_created_after_the_start(
    client: Client, make_server: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "late"
    server = make_server(home=home)
    (home / "serve.toml").write_text('name = "late-file"\n')
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reloaded", seen), server.log_text()
    assert await _server_name(server, client.home) == "late-file"


def test_sighup_switches_the_log_format(make_server: ServerFactory, tmp_path: Path) -> None:
    home = tmp_path / "logs"
    server = make_server(home=home)
    (home / "serve.toml").write_text('log-format = "json"\n')
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reloaded", seen), server.log_text()
    lines = server.log_text()[seen:].splitlines()
    entries = [json.loads(line) for line in lines[lines.index(
        next(line for line in lines if "log format is now json" in line)):]]
    assert entries[0]["message"] == "log format is now json"
    assert any(e["message"].startswith("reloaded") for e in entries)


def test_sighup_change_that_needs_a_restart_is_named(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    home = tmp_path / "restart"
    home.mkdir()
    (home / "serve.toml").write_text('host = "127.0.0.1"\n')
    server = make_server(home=home)
    (home / "serve.toml").write_text('host = "127.0.0.5"\n')
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reloaded", seen)
    assert "host changed in the configuration: it takes effect at the next restart" in \
        server.log_text()[seen:]


def test_sigterm_drains_a_running_command(
    client: Client, make_server: ServerFactory, mark: Marker
) -> None:
    server = make_server("--drain", "30")
    own = client.other(server=server)
    proc = own.popen("sh", "-c", "sleep 2; echo done; exit 3", opts=mark.opts,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    mark.wait_for(1)
    idle = own.popen("sleep", "0")  # an idle connection would not hold the drain up
    idle.wait(30)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert _logged(server, "draining"), server.log_text()
    refused = own.run("echo", "new")
    assert refused.returncode == 255, "a new connection was accepted while draining"
    out, err = proc.communicate(timeout=30)
    assert (out, proc.returncode) == (b"done\n", 3), err
    assert server.proc.wait(15) == 0
    assert time.monotonic() - started < 15
    assert "tether serve: stopped" in server.log_text()
    assert mark.survivors(5) == []


def test_a_second_sigterm_ends_at_once(
    client: Client, make_server: ServerFactory, mark: Marker
) -> None:
    server = make_server("--drain", "120", "--discoverable")
    own = client.other(server=server)
    proc = own.popen("sleep", "120", opts=mark.opts, stderr=subprocess.PIPE)
    mark.wait_for(1)
    assert _discovered(server) == [server.fingerprint]
    server.proc.send_signal(signal.SIGTERM)
    assert _logged(server, "draining")
    time.sleep(0.5)
    assert server.alive(), "the first SIGTERM should drain, not stop"
    assert _discovered(server) == [], "a draining server invites no new clients"
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    assert time.monotonic() - started < 10
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 255 and b"shutting down" in err
    assert mark.survivors(5) == []


def test_the_drain_has_a_deadline(
    client: Client, make_server: ServerFactory, mark: Marker
) -> None:
    server = make_server("--drain", "1")
    own = client.other(server=server)
    proc = own.popen("sleep", "120", opts=mark.opts, stderr=subprocess.PIPE)
    mark.wait_for(1)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert 1 <= time.monotonic() - started < 15
    assert "drain time is up: ending 1 busy connection(s)" in server.log_text()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 255 and b"shutting down" in err
    assert mark.survivors(5) == []


async def test_sighup_reloads_the_authorized_list_without_ending_a_revoked_clients_command(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory,
    cli: Cli, tmp_path: Path,
) -> None:
    """A client revoked and another authorized, then SIGHUP: the revoked client's running
    command finishes intact, its next connection is refused, the new client gets in."""
    home = tmp_path / "trust"
    server = make_server(home=home)
    own = client.other(server=server)
    go = tmp_path / "go"
    proc = own.popen("sh", "-c", _until(go, "echo end; exit 5"),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"start\n"

    late = client.other(server=server, home=make_client_home("late"))
    line = cli("id", home=late.home).stdout.decode().strip()
    assert cli("authorize", line, home=home).returncode == 0
    assert cli("authorize", "--revoke", "e2e-client", home=home).returncode == 0
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reloaded", seen), server.log_text()

    admitted = late.run("echo", "in", opts=["--accept-new"])
    assert (admitted.returncode, admitted.stdout) == (0, b"in\n"), admitted.stderr
    refused = own.run("true")
    assert refused.returncode == 255 and b"not authorized" in refused.stderr
    assert proc.poll() is None, "the revoked client's command should still be running"
    go.touch()
    out, err = proc.communicate(timeout=30)
    assert (out, proc.returncode) == (b"end\n", 5), err


@pytest.mark.parametrize("op", ["put", "get"])
async def test_sigterm_drain_lets_a_running_transfer_finish(
    client: Client, make_server: ServerFactory, tmp_path: Path, op: str
) -> None:
    """A transfer slowed to ~1 MB/s by a proxy is under way when SIGTERM comes: it completes
    byte for byte, then the server exits 0 (the connection is busy while its stream is open)."""
    server = make_server("--drain", "30")
    payload = os.urandom(3_000_000)
    local, remote = tmp_path / "local.bin", server.root / f"drained-{op}.bin"
    (local if op == "put" else remote).write_bytes(payload)
    slow = Faults(rate=1_000_000)
    faults = {"upstream": slow} if op == "put" else {"downstream": slow}
    async with Proxy(("127.0.0.1", server.port), **faults) as proxy, \
            tether.connect("127.0.0.1", proxy.port, home=client.home, accept_new=True) as conn:
        moving = asyncio.create_task(
            conn.put(local, remote.name) if op == "put" else conn.get(remote.name, local))
        written = (remote if op == "put" else local)
        part = written.with_name(f".{written.name}.tether-part")
        for _ in range(300):  # its first bytes are on their way to the destination
            if moving.done() or (part.exists() and part.stat().st_size > 0):
                break
            await asyncio.sleep(0.05)
        assert not moving.done(), "the transfer should take about 3 s"
        assert part.exists(), "the transfer did not start"
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(_logged, server, "1 connection(s) busy")
        await asyncio.wait_for(moving, 30)
    assert written.read_bytes() == payload
    assert await asyncio.to_thread(server.proc.wait, 15) == 0
    assert "drain time is up" not in server.log_text()


def test_sigterm_drain_lets_a_classic_command_finish(make_server: ServerFactory,
                                                     tmp_path: Path) -> None:
    """A classic-protocol command under way when SIGTERM comes gets its answer; the classic
    port takes no new connection meanwhile."""
    server = make_server("--drain", "30", "--classic-port", "0")
    found = re.search(r"classic protocol on 127\.0\.0\.1:(\d+)", server.log_text())
    assert found, server.log_text()
    port = int(found.group(1))
    started = tmp_path / "started"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"touch {started}; sleep 2; echo drained classic".encode())
        assert wait_until(started.exists, 15), "the classic command did not start"
        server.proc.send_signal(signal.SIGTERM)
        assert _logged(server, "draining: no new connections; 1 connection(s) busy")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        answer = b""
        while not answer.endswith(b"\n"):
            piece = sock.recv(4096)
            assert piece, f"closed before the answer: {answer!r}"
            answer += piece
        assert answer == b"drained classic\n"
    assert server.proc.wait(15) == 0
    assert "drain time is up" not in server.log_text()


def test_sighup_reloads_the_trusted_ca(tmp_path: Path) -> None:
    """``--trust-ca FILE`` is read again on SIGHUP: a new CA in the file admits its clients and
    the old one's are refused, for the next connection; a file that no longer loads is refused
    with the running trust kept."""
    first, second = Lab(tmp_path / "one"), Lab(tmp_path / "two")
    for lab in (first, second):
        ok(lab_tether("ca", "init", str(lab.ca_dir), "--name", f"CA {lab.tmp.name}"))
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(first.ca_cert.read_bytes())
    server = first.server("s", "--trust-ca", str(trusted), principals="dev\n", trust=False)
    try:
        alice = first.client("alice", ("dev",))
        bob = second.client("bob", ("dev",))
        assert first.run(alice, server, "true", opts=("--accept-new",)).returncode == 0
        assert first.run(bob, server, "true", opts=("--accept-new",)).returncode == 255

        trusted.write_text("not a certificate\n")
        seen = len(server.log_text())
        server.proc.send_signal(signal.SIGHUP)
        assert _logged(server, "reload refused", seen), server.log_text()
        assert first.run(alice, server, "true").returncode == 0  # the running trust is kept

        trusted.write_bytes(second.ca_cert.read_bytes())
        seen = len(server.log_text())
        server.proc.send_signal(signal.SIGHUP)
        assert _logged(server, "reloaded", seen), server.log_text()
        assert first.run(bob, server, "true").returncode == 0
        assert first.run(alice, server, "true").returncode == 255
    finally:
        first.stop()


async def test_sighup_derives_the_limits_again(
    client: Client, make_server: ServerFactory, tmp_path: Path
) -> None:
    """A reload that changes a limit resolves the derived ones (0) again, as the start did, so
    the server keeps admitting clients; a limit that sized something at start is named."""
    home = tmp_path / "limits"
    server = make_server(home=home)
    (home / "serve.toml").write_text("max-processes-per-client = 5\ndisk-threads = 9\n")
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "reloaded", seen), server.log_text()
    after = server.log_text()[seen:]
    assert "limits: max-connections" in after and "(derived from RLIMIT_NOFILE" in after
    assert "disk-threads changed in the configuration: it takes effect at the next restart" \
        in after
    assert "configuration changed: limits" in after
    for _ in range(3):
        assert await _server_name(server, client.home)  # still admitted
    done = client.other(server=server).run("echo", "fine")
    assert (done.returncode, done.stdout) == (0, b"fine\n"), done.stderr



def test_sighup_that_lifts_the_byte_budget_resumes_a_paused_identity(
    client: Client, make_server: ServerFactory, tmp_path: Path
) -> None:
    """Over --max-buffered-per-client (8 commands that never read stdin, each sent its 4 MiB
    window) a client's connection is no longer read; a reload that lifts the budget (0) lets
    the rest in at once."""
    import threading

    from hostile.rawclient import RawClient, msg_frame
    from tether.identity import load_identity
    from tether.protocol.frames import encode_data_prefix

    home = tmp_path / "budget"
    home.mkdir()
    (home / "serve.toml").write_text(f"max-buffered-per-client = {2 * 1024 * 1024}\n")
    server = make_server(home=home)
    raw = RawClient.connect(server.port, load_identity(client.home), timeout=60)
    raw.handshake()
    raw.send(b"".join(msg_frame({"t": "exec", "argv": ["sleep", "60"]}, stream=2 * n + 1)
                      for n in range(8)))
    time.sleep(0.5)
    mib = 1024 * 1024
    frames = [encode_data_prefix(2 * n + 1, 0, mib) + b"z" * mib
              for n in range(8) for _ in range(4)]
    sent: list[int] = []

    def send_all() -> None:
        for frame in frames:
            raw.sock.sendall(frame)
            sent.append(len(frame))

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    assert _logged(server, "byte budget binds for "), server.log_text()
    time.sleep(2)
    blocked = sum(sent)
    assert sender.is_alive() and blocked < 24 * mib, blocked  # the server stopped reading
    (home / "serve.toml").write_text("max-buffered-per-client = 0\n")
    seen = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    assert _logged(server, "configuration changed: limits", seen), server.log_text()
    sender.join(20)
    assert not sender.is_alive(), f"still blocked after the reload: {sum(sent)} bytes sent"
    assert sum(sent) == sum(len(f) for f in frames)
    raw.close()
