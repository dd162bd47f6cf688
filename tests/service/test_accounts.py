"""Service features for sessions mapped to Unix accounts (root only), which a worker process
serves as the account (server/privsep.py), not the listener: SIGTERM drains them in the worker,
and the metrics count what the workers do."""

from __future__ import annotations

import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_metrics import scrape, value

from support import TETHER, wait_until
from trust.accounts import accounts_fixture, needs_root
from trust.lab import Lab, env_for, lab_fixture

pytestmark = needs_root


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path)


@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    for accounts in accounts_fixture(1):
        yield accounts[0]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the account can see (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="tether-drain-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_sigterm_drain_lets_a_mapped_accounts_command_finish(
    lab: Lab, account: pwd.struct_passwd, open_dir: Path
) -> None:
    server = lab.server("s", "--drain", "30", principals=f"dev user={account.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    go = open_dir / "go"
    script = (f"echo start; i=0; while [ ! -e '{go}' ] && [ $i -lt 1200 ]; do sleep 0.1; "
              f"i=$((i+1)); done; id -un; exit 4")
    proc = subprocess.Popen(
        [*TETHER, "run", "-p", str(server.port), "--accept-new",
         f"{account.pw_name}@127.0.0.1", "--", "sh", "-c", script],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env_for(alice), start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"start\n"
        server.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "draining" in server.log_text(), 15), server.log_text()
        refused = lab.run(alice, server, "true", host=f"{account.pw_name}@127.0.0.1")
        assert refused.returncode == 255, "a new connection was accepted while draining"
        assert proc.poll() is None and server.alive(), "the worker's command was not drained"
        go.touch()
        out, err = proc.communicate(timeout=30)
        assert (out, proc.returncode) == (f"{account.pw_name}\n".encode(), 4), err
        assert server.proc.wait(15) == 0
        assert "drain time is up" not in server.log_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_sigterm_ends_a_mapped_accounts_command_at_once(
    lab: Lab, account: pwd.struct_passwd
) -> None:
    server = lab.server("s", "--drain", "120", principals=f"dev user={account.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    proc = subprocess.Popen(
        [*TETHER, "run", "-p", str(server.port), "--accept-new",
         f"{account.pw_name}@127.0.0.1", "--", "sh", "-c", "echo start; sleep 120"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env_for(alice), start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"start\n"
        server.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "draining" in server.log_text(), 15), server.log_text()
        assert proc.poll() is None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 255 and b"shutting down" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_metrics_count_what_a_worker_does(lab: Lab, account: pwd.struct_passwd) -> None:
    server = lab.server("s", "--metrics", "127.0.0.1:0",
                        principals=f"dev user={account.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    host = f"{account.pw_name}@127.0.0.1"
    before = scrape(server)
    assert lab.run(alice, server, "true", host=host, opts=("--accept-new",)).returncode == 0
    assert lab.run(alice, server, "exit 3", host=host).returncode == 3
    proc = subprocess.Popen(
        [*TETHER, "run", "-p", str(server.port), host, "--", "sh", "-c", "echo start; sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env_for(alice), start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"start\n"
        during = scrape(server)
    finally:
        proc.kill()
        proc.wait()

    def delta(name: str, **labels: str) -> float:
        return value(scrape(server), name, **labels) - value(before, name, **labels)

    assert value(during, "tether_processes_running") == 1
    assert sum(v for (name, _), v in during.items() if name == "tether_processes") == 1
    assert wait_until(lambda: delta("tether_connections_total") == 3, 15)
    assert delta("tether_commands_finished_total", kind="command", outcome="success") == 1
    assert delta("tether_commands_finished_total", kind="command", outcome="failure") == 1
