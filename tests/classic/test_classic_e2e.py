"""The tutorial's own clients against a real ``tether serve --classic-port`` (issue 8)."""

from __future__ import annotations

import contextlib
import http.client
import os
import struct
import time
import urllib.request
from pathlib import Path

from classic import classic_clients as classic
from classic.classic_harness import ClassicServe, tether
from support import wait_until


def stored(server: ClassicServe, name: str, size: int) -> bytes:
    """The bytes stored under ``name`` once the upload is complete (uploads get no reply)."""
    path = server.root / name
    assert wait_until(lambda: path.exists() and path.stat().st_size == size, 10), (
        f"{name} not stored\n{server.log_text()[-2000:]}")
    return path.read_bytes()


# --- command mode --------------------------------------------------------------------------------


def test_command_output(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "echo hello classic") == b"hello classic\n"


def test_stdout_wins_over_stderr(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "echo out; echo err >&2") == b"out\n"


def test_stderr_only_output(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        reply = classic.command(sock, "ls /no-such-dir-for-classic")
    assert b"no-such-dir-for-classic" in reply
    assert b"No such file" in reply


def test_empty_line_gets_an_error_and_the_connection_lives_on(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "\n") == b"tether: empty command\n"
        assert classic.command(sock, "   \t ") == b"tether: empty command\n"
        assert classic.command(sock, "echo still here") == b"still here\n"


def test_no_output_gets_a_note(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "true") == b"tether: no output (exit status 0)\n"
        assert classic.command(sock, "exit 3") == b"tether: no output (exit status 3)\n"


def test_commands_run_in_the_root(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "pwd").decode().strip() == str(server.root)


def test_commands_are_logged_and_audited(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        classic.command(sock, "echo logged-marker-71")
    assert wait_until(lambda: "classic 127.0.0.1:" in server.log_text()
                      and "logged-marker-71" in server.log_text(), 5)
    events = [e for e in server.audit_events()
              if e["event"] == "classic" and e.get("command") == "echo logged-marker-71"]
    assert len(events) == 1
    assert events[0]["op"] == "command" and events[0]["status"] == 0
    assert events[0]["address"].startswith("127.0.0.1:")


# --- file mode -----------------------------------------------------------------------------------


def test_upload_text_file(server: ClassicServe, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("first line\nzweite Zeile — ünïcödé\n" * 50, encoding="utf-8")
    with classic.connect(server.classic_port) as sock:
        classic.upload(sock, src)
    assert stored(server, "notes.txt", src.stat().st_size) == src.read_bytes()


def test_upload_binary_file(server: ClassicServe, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 64 + os.urandom(3 * 1024 * 1024 + 17))
    with classic.connect(server.classic_port) as sock:
        classic.upload(sock, src)
    assert stored(server, "blob.bin", src.stat().st_size) == src.read_bytes()
    assert wait_until(lambda: any(e.get("op") == "upload" and e.get("stored") == "blob.bin"
                                  for e in server.audit_events()), 5)


def test_name_collision_gets_a_fresh_name(server: ClassicServe, tmp_path: Path) -> None:
    src = tmp_path / "report.txt"
    with classic.connect(server.classic_port) as sock:
        src.write_bytes(b"first\n")
        classic.upload(sock, src)
        stored(server, "report.txt", 6)
        src.write_bytes(b"second!\n")
        classic.upload(sock, src)
    assert stored(server, "report (1).txt", 8) == b"second!\n"
    assert (server.root / "report.txt").read_bytes() == b"first\n"


def test_dotdot_is_stored_as_its_basename(server: ClassicServe, tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(b"escape attempt\n")
    with classic.connect(server.classic_port) as sock:
        classic.upload(sock, src, filename="../x")
    assert stored(server, "x", 15) == b"escape attempt\n"
    assert not (server.root.parent / "x").exists()


def test_header_split_from_its_length_and_body_in_one_send(server: ClassicServe) -> None:
    """The 4 length bytes alone first (detection waits for the '{'), then header and body."""
    header = b'{"opt": "upload", "filename": "split.txt", "filesize": 5}'
    with classic.connect(server.classic_port) as sock:
        sock.send(struct.pack("i", len(header)))
        time.sleep(0.2)
        sock.send(header + b"hello")
        assert classic.command(sock, "cat split.txt") == b"hello"


def test_download(server: ClassicServe) -> None:
    data = os.urandom(300_000)
    (server.root / "fetch.bin").write_bytes(data)
    with classic.connect(server.classic_port) as sock:
        header, body = classic.download(sock, "fetch.bin")
        assert header == {"opt": "download", "filename": "fetch.bin", "filesize": len(data)}
        assert body == data
        assert classic.command(sock, "echo after") == b"after\n"


def test_download_of_a_missing_file(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        header, body = classic.download(sock, "missing.bin")
        assert header["filesize"] == 0 and body == b""
        assert "no such file" in header["error"]
        assert classic.command(sock, "echo alive") == b"alive\n"


# --- bounds and the TLS port ---------------------------------------------------------------------


def test_tls_port_does_not_speak_classic(server: ClassicServe) -> None:
    with classic.connect(server.tls_port) as sock:
        sock.settimeout(10)
        sock.send(b"echo should-not-run")
        try:
            reply = sock.recv(classic.BIG_RECV)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert b"should-not-run" not in reply


def test_malformed_header_closes_only_that_connection(server: ClassicServe,
                                                      tmp_path: Path) -> None:
    bad = b"{not json at all}"
    with classic.connect(server.classic_port) as sock:
        sock.send(struct.pack("i", len(bad)) + bad)
        assert sock.recv(100) == b""  # closed by the server
    assert wait_until(lambda: "header is not JSON" in server.log_text(), 5)
    assert server.alive()
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "echo classic-ok") == b"classic-ok\n"
    # and a normal, authenticated tether client is served as before
    client_home = tmp_path / "client"
    assert tether("keygen", "--name", "classic-test", home=client_home).returncode == 0
    line = tether("id", home=client_home).stdout.decode().strip()
    done = tether("authorize", line, home=server.home)
    assert done.returncode == 0, done.stderr
    run = tether("run", "--accept-new", "-p", str(server.tls_port), "127.0.0.1", "echo tls-ok",
                 home=client_home)
    assert run.returncode == 0, run.stderr
    assert run.stdout == b"tls-ok\n"


def test_too_large_upload_is_refused(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        classic.send_header(sock, {"opt": "upload", "filename": "huge.bin",
                                   "filesize": 2 << 30})
        assert sock.recv(100) == b""
    assert not (server.root / "huge.bin").exists()
    assert wait_until(lambda: "exceeds the limit" in server.log_text(), 5)


def test_unsafe_upload_name_is_refused(server: ClassicServe) -> None:
    with classic.connect(server.classic_port) as sock:
        classic.send_header(sock, {"opt": "upload", "filename": "..", "filesize": 3})
        try:
            sock.send(b"abc")
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert wait_until(lambda: "upload refused" in server.log_text(), 5)


def _serve_refusal(tmp_path: Path, *args: str) -> tuple[int, str]:
    done = tether("serve", "-p", "0", "--root", str(tmp_path), *args, home=tmp_path / "h",
                  timeout=30)
    return done.returncode, done.stderr.decode()


def test_non_loopback_classic_host_needs_the_flag(tmp_path: Path) -> None:
    code, err = _serve_refusal(tmp_path, "--classic-port", "0", "--classic-host", "0.0.0.0")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("tether: ")
    assert "--i-understand-classic-is-unauthenticated" in err
    assert "Traceback" not in err


def test_classic_port_is_never_the_tls_port(tmp_path: Path) -> None:
    done = tether("serve", "-p", "7799", "--root", str(tmp_path), "--classic-port", "7799",
                  home=tmp_path / "h", timeout=30)
    assert done.returncode == 1
    assert done.stderr.decode() == "tether: --classic-port must differ from the TLS port\n"


def test_classic_host_alone_is_an_error(tmp_path: Path) -> None:
    code, err = _serve_refusal(tmp_path, "--classic-host", "127.0.0.1")
    assert code == 1 and err == "tether: --classic-host needs --classic-port\n"


def _post(port: int, body: bytes, **headers: str) -> None:
    """What a web page's ``fetch(url, {method: 'POST', mode: 'no-cors', body})`` makes a
    browser send: a real HTTP client's request."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/x", data=body, method="POST",
                                     headers={"Content-Type": "text/plain", **headers})
    with contextlib.suppress(OSError, http.client.HTTPException):
        urllib.request.urlopen(request, timeout=10).read()


def test_a_web_page_cannot_run_commands_on_the_classic_port(server: ClassicServe) -> None:
    marker = server.root / "posted-by-a-web-page"
    for body in (f"touch {marker}\n".encode(), b"x" * 3000 + f"\ntouch {marker}\n".encode()):
        _post(server.classic_port, body, Origin="http://evil.example")
    with classic.connect(server.classic_port) as sock:  # request line and headers apart
        sock.send(b"POST /x HTTP/1.1\r\n")
        time.sleep(0.2)
        with contextlib.suppress(OSError):
            sock.send(b"Host: 127.0.0.1\r\n\r\n" + f"touch {marker}".encode())
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1024) == b""
    assert not marker.exists()
    closed = [e for e in server.audit_events() if "HTTP request" in str(e.get("reason", ""))]
    assert len(closed) >= 3
    with classic.connect(server.classic_port) as sock:  # it serves everyone else as before
        assert classic.command(sock, "echo still here") == b"still here\n"
