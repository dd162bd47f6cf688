"""``tether forward``, ``-L/-R/-D`` on ``tether run``, and ``tether proxy``, as subprocesses with
real clients (curl, and the remote side through ``tether run``)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import cli_env
from support import TETHER, stop_process, wait_until

from .conftest import Http, Served, curl

LINE = re.compile(r"^(local|remote|socks) (\S+):(\d+)")


def start_forward(served: Served, *specs: str) -> tuple[subprocess.Popen[bytes], list[str]]:
    proc = subprocess.Popen([*TETHER, "forward", "-p", str(served.server.port), *specs,
                             "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=cli_env(served.client.home))
    assert proc.stdout is not None
    count = sum(1 for s in specs if s in ("-L", "-R", "-D"))
    lines = [proc.stdout.readline().decode() for _ in range(count)]
    return proc, lines


def port_of(lines: list[str], kind: str) -> int:
    for line in lines:
        found = LINE.match(line)
        if found and found.group(1) == kind:
            return int(found.group(3))
    raise AssertionError(lines)


def test_forward_command_L_R_D_with_curl_then_ctrl_c(served: Served, http: Http) -> None:
    proc, lines = start_forward(served, "-L", f"0:127.0.0.1:{http.port}",
                                "-R", f"0:127.0.0.1:{http.port}", "-D", "0")
    try:
        assert len(lines) == 3 and all(LINE.match(line) for line in lines), lines
        local, remote, socks = (port_of(lines, k) for k in ("local", "remote", "socks"))
        big = (http.root / "big.bin").read_bytes()
        done = curl(f"http://127.0.0.1:{local}/big.bin")
        assert done.returncode == 0 and done.stdout == big, done.stderr
        done = curl("--socks5-hostname", f"127.0.0.1:{socks}",
                    f"http://localhost:{http.port}/index.html")
        assert done.stdout == b"<h1>tether forward</h1>\n", done.stderr
        # -R 0: the port the server chose, used from the server's side
        remote_side = served.client.run(
            "curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{remote}/index.html")
        assert remote_side.stdout == b"<h1>tether forward</h1>\n", remote_side.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        _, err = proc.communicate()
        assert b"Traceback" not in err
    finally:
        stop_process(proc)
    for port in (local, remote, socks):  # nothing is left listening, here or on the server
        assert wait_until(lambda p=port: _closed(p), 10), port


def _closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_refused_destination_prints_one_line_and_the_forward_goes_on(served: Served,
                                                                       http: Http) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    proc, lines = start_forward(served, "-L", f"0:127.0.0.1:{closed}",
                                "-L", f"0:127.0.0.1:{http.port}")
    try:
        dead, alive = (int(LINE.match(line).group(3)) for line in lines)  # type: ignore[union-attr]
        done = curl(f"http://127.0.0.1:{dead}/")
        assert done.returncode != 0
        assert curl(f"http://127.0.0.1:{alive}/index.html").returncode == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        _, err = proc.communicate()
    text = err.decode()
    assert f"cannot connect to 127.0.0.1:{closed}: connection refused" in text, text
    assert text.count("\n") == 1


def test_run_with_L_keeps_the_forward_while_the_command_runs(served: Served, http: Http,
                                                            tmp_path: Path) -> None:
    sock = tmp_path / "web.sock"
    proc = subprocess.Popen(
        [*TETHER, "run", "-p", str(served.server.port), "-L", f"{sock}:127.0.0.1:{http.port}",
         "127.0.0.1", "--", "sleep", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(served.client.home), stdin=subprocess.DEVNULL)
    try:
        assert wait_until(sock.exists, 20)
        got = curl("--unix-socket", str(sock), "http://x/index.html")
        assert got.stdout == b"<h1>tether forward</h1>\n", got.stderr
        assert proc.wait(30) == 0
        _, err = proc.communicate()
        assert f"local {sock} -> 127.0.0.1:{http.port}".encode() in err
    finally:
        stop_process(proc)
    assert not sock.exists()


@pytest.mark.parametrize("spec, message", [
    ("8080", "write [BIND:]PORT:DEST:DPORT"),
    ("0:host:99999", "is not a port number"),
    ("a:b:c:d:80", "write [BIND:]PORT:DEST:DPORT"),
])
def test_a_bad_spec_is_a_usage_error(served: Served, spec: str, message: str) -> None:
    done = subprocess.run([*TETHER, "forward", "-p", str(served.server.port), "-L", spec,
                           "127.0.0.1"], capture_output=True, timeout=60,
                          env=cli_env(served.client.home), stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert message.encode() in done.stderr and done.stderr.count(b"\n") == 1


def test_forwards_and_hops_are_for_one_host(served: Served) -> None:
    done = subprocess.run([*TETHER, "run", "-p", str(served.server.port), "-L", "0:h:80",
                           "127.0.0.1,127.0.0.2", "--", "true"], capture_output=True,
                          timeout=60, env=cli_env(served.client.home), stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert b"reach one host" in done.stderr and done.stderr.count(b"\n") == 1
