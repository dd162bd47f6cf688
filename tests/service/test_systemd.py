"""The systemd unit: it verifies, and its ExecStart line, run as systemd would run it (a
NOTIFY_SOCKET to report to, a listening socket passed as descriptor 3 with LISTEN_FDS), says
READY=1 once listening, serves on the inherited socket and says STOPPING=1 on SIGTERM. Also the
log shapes (journald, JSON) and the descriptor limit raised at start."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import LISTENING, TETHER, await_line, start_serve, stop_process
from tether.server.service import notify

Cli = Callable[..., subprocess.CompletedProcess[bytes]]
ANALYZE = shutil.which("systemd-analyze")


def _unit(cli: Cli, *args: str) -> str:
    done = cli("service", "install", "--print", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def _directives(unit: str) -> dict[str, str]:
    found = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found[key] = value
    return found


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package "
                                             "systemd)")
@pytest.mark.parametrize("user", ["root", "daemon"])  # systemd warns about nobody itself
def test_units_pass_systemd_analyze_verify(cli: Cli, tmp_path: Path, user: str) -> None:
    done = cli("service", "install", "--dest", str(tmp_path), "--user", user, "--home",
               str(tmp_path / "home dir"), "--socket", "127.0.0.1:7799")
    assert done.returncode == 0, done.stderr
    assert b"wrote" in done.stdout and b"systemctl enable --now tether.socket" in done.stdout
    assert ANALYZE is not None
    check = subprocess.run([ANALYZE, "verify", str(tmp_path / "tether.service"),
                            str(tmp_path / "tether.socket")], capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr.decode()
    assert b"tether." not in check.stderr, check.stderr.decode()  # no warning about our units


def test_the_unit_says_what_a_service_needs(cli: Cli) -> None:
    unit = _directives(_unit(cli, "--user", "nobody", "--home", "/srv/tether home"))
    assert unit["Type"] == "notify"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["LimitNOFILE"] == "65536"
    assert unit["KillMode"] == "mixed"
    assert int(unit["TimeoutStopSec"]) > 10  # longer than the default drain
    assert unit["User"] == "nobody"
    assert unit["Environment"] == '"TETHER_HOME=/srv/tether home"'
    assert shlex.split(unit["ExecStart"])[-2:] == ["--home", "/srv/tether home"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectKernelModules",
                      "RestrictSUIDSGID"):
        assert hardening in unit
    as_root = _directives(_unit(cli, "--user", "root"))
    assert "NoNewPrivileges" not in as_root and "ProtectSystem" not in as_root
    assert "ProtectKernelModules" in as_root
    nobody = cli("service", "install", "--print", "--user", "no-such-user-x")
    assert (nobody.returncode, nobody.stderr) == (1, b"tether: no such user: no-such-user-x\n")


def test_the_stop_timeout_outlasts_the_configured_drain(cli: Cli, tmp_path: Path) -> None:
    """systemd must not SIGKILL a server that is still draining: TimeoutStopSec follows the
    configuration file's drain (or --drain), plus time for the kill grace."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "serve.toml").write_text("drain = 95.5\n")
    assert _directives(_unit(cli, "--home", str(home)))["TimeoutStopSec"] == "116"
    flagged = _directives(_unit(cli, "--home", str(home), "--drain", "5"))
    assert flagged["TimeoutStopSec"] == "25"
    other = tmp_path / "other.toml"
    other.write_text("drain = 0\n")
    unit = _directives(_unit(cli, "--home", str(home), "--config", str(other)))
    assert unit["TimeoutStopSec"] == "20"
    assert _directives(_unit(cli, "--home", str(tmp_path / "none")))["TimeoutStopSec"] == "30"


def test_a_bare_socket_port_listens_on_loopback(cli: Cli) -> None:
    """As `tether serve` does: every interface is an explicit choice."""
    assert "ListenStream=127.0.0.1:7799\n" in _unit(cli, "--socket", "7799")
    assert "ListenStream=0.0.0.0:7799\n" in _unit(cli, "--socket", "0.0.0.0:7799")
    assert "ListenStream=[::]:7799\n" in _unit(cli, "--socket", "[::]:7799")


@contextlib.contextmanager
def _notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as systemd's own is, and its address."""
    name = f"tether-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _authorize(cli: Cli, server_home: Path, client_home: Path) -> None:
    line = cli("id", home=client_home).stdout.decode().strip()
    assert cli("authorize", line, home=server_home).returncode == 0


def test_exec_start_notifies_and_serves_on_the_inherited_socket(
    cli: Cli, client_home: Path, tmp_path: Path
) -> None:
    home = tmp_path / "server"
    _authorize(cli, home, client_home)
    unit = _directives(_unit(cli, "--home", str(home)))
    argv = shlex.split(unit["ExecStart"])
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_HOME", "TETHER_DEBUG")}
    name, _, value = shlex.split(unit["Environment"])[0].partition("=")
    env[name] = value
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    log = tmp_path / "serve.log"
    with _notify_socket() as (notified, address), log.open("ab") as sink:
        env["NOTIFY_SOCKET"] = address
        # what systemd does between fork and exec: descriptor 3, LISTEN_PID = the server's pid
        proc = subprocess.Popen(
            ["bash", "-c", f'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<&{fd} {fd}<&-',
             "bash", *argv], pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=sink, start_new_session=True)
        listener.close()
        try:
            ready = notified.recv(4096).decode()
            assert "READY=1" in ready.splitlines(), ready
            assert f"MAINPID={proc.pid}" in ready.splitlines()
            assert f"STATUS=listening on 127.0.0.1:{port}" in ready
            text = log.read_text()
            assert f"listening on 127.0.0.1:{port}" in text
            assert "using the listening socket the service manager passed (1 given)" in text
            done = cli("run", "-p", str(port), "--accept-new", "127.0.0.1", "--",
                       "echo", "via the inherited socket", home=client_home)
            assert (done.returncode, done.stdout) == (0, b"via the inherited socket\n"), \
                done.stderr
            proc.send_signal(signal.SIGTERM)
            assert notified.recv(4096) == b"STOPPING=1"
            assert proc.wait(30) == 0
        finally:
            stop_process(proc)
    environ = log.read_text()
    assert "LISTEN_FDS" not in environ


def test_notify_reaches_a_path_socket_and_is_quiet_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


def _serve_logging(tmp_path: Path, extra_env: dict[str, str], *args: str,
                   journal: bool = False) -> str:
    """Start a server, make it log a warning (a client that is not TLS), stop it; its log."""
    log = tmp_path / "serve.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if k != "TETHER_DEBUG"}
    if journal:
        st = os.stat(log)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    env.update(extra_env)
    server = start_serve(tmp_path / "home", tmp_path / "root", log, *args, env=env)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            sock.recv(100)
    await_line(server.proc, log, re.compile("refused"))
    server.stop()
    return log.read_text()


def test_under_journald_lines_have_priorities_and_no_timestamps(tmp_path: Path) -> None:
    text = _serve_logging(tmp_path, {}, journal=True)
    lines = text.splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), text
    assert any(line.startswith("<6>tether serve: listening on 127.0.0.1:") for line in lines)
    assert any(line.startswith("<4>refused 127.0.0.1") for line in lines), text
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", text), "a timestamp of our own"


def test_json_log_lines(tmp_path: Path) -> None:
    text = _serve_logging(tmp_path, {}, "--log-format", "json")
    entries = [json.loads(line) for line in text.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"].startswith("listening on 127.0.0.1:") for e in entries)
    assert any(e["level"] == "warning" and e["message"].startswith("refused 127.0.0.1")
               for e in entries)


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip(f"the hard limit here is only {hard}")
    log = tmp_path / "serve.log"
    log.touch()
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [*TETHER, "serve", "-p", "0", "--root", str(tmp_path)],
            env={**os.environ, "TETHER_HOME": str(tmp_path / "home")},
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    try:
        await_line(proc, log, LISTENING)
        assert f"soft RLIMIT_NOFILE raised from 256 to the hard limit {hard}" in log.read_text()
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == [str(hard), str(hard)]
    finally:
        stop_process(proc)


@pytest.mark.parametrize("kind", ["udp", "unlistened"])
def test_an_inherited_descriptor_that_is_not_a_listening_tcp_socket_is_refused(
    tmp_path: Path, kind: str
) -> None:
    """A hand-written tether.socket with ListenDatagram (or a socket that is not listening):
    one line naming the descriptor, exit status 1, no traceback."""
    family = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, family) as given:
        given.bind(("127.0.0.1", 0))
        fd = given.fileno()
        env = {**os.environ, "TETHER_HOME": str(tmp_path / "home")}
        done = subprocess.run(
            ["bash", "-c", f'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<&{fd} {fd}<&-',
             "bash", *TETHER, "serve", "--root", str(tmp_path)], pass_fds=(fd,), env=env,
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode() == ("tether: LISTEN_FDS: descriptor 3 is not a listening TCP "
                                    "socket (tether.socket needs ListenStream=[ADDR:]PORT)\n")
