"""``tether mux`` as a process: started on demand or by hand, one per home, its socket only for
its own user (mode 0600 and SO_PEERCRED), only for its own home and identity, gone when idle."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from support import TETHER, wait_until
from tether.client import mux

HOST = "127.0.0.1"


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def home(make_client_home: Callable[..., Path], server: object) -> Iterator[Path]:
    """A fresh authorized identity with the shared server pinned; its mux stopped at the end."""
    from tether.home import add_known_host

    path = make_client_home("muxhome", authorized=True)
    add_known_host(path, HOST, server.port, server.fingerprint)  # type: ignore[attr-defined]
    yield path
    try:
        pid = mux.request(path, {"op": "status"})["pid"]
    except mux.MuxUnavailable:
        return
    mux.request(path, {"op": "stop"})
    if not wait_until(lambda: not _pid_alive(pid), 10):
        os.kill(pid, 9)


def _status(cli: Callable[..., subprocess.CompletedProcess[bytes]], home: Path) -> dict:
    done = cli("mux", "status", "--json", home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_start_status_stop(cli: Callable[..., subprocess.CompletedProcess[bytes]],
                           home: Path, server: object) -> None:
    started = cli("mux", "start", "--persist", "30", home=home)
    assert started.returncode == 0, started.stderr
    status = _status(cli, home)
    pid, path = status["pid"], status["socket"]
    assert _pid_alive(pid) and status["connections"] == []
    assert path == mux.socket_path(home)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o077 == 0

    again = cli("mux", "start", home=home)  # one mux per home
    assert again.returncode == 0 and b"already running" in again.stderr
    assert _status(cli, home)["pid"] == pid

    sock, fp = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
    sock.close()
    assert fp == server.fingerprint  # type: ignore[attr-defined]
    (conn,) = _status(cli, home)["connections"]
    assert (conn["host"], conn["port"]) == (HOST, server.port)  # type: ignore[attr-defined]

    stopped = cli("mux", "stop", home=home)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_until(lambda: not _pid_alive(pid), 10)
    assert not os.path.exists(path)
    gone = cli("mux", "status", home=home)
    assert gone.returncode == 1 and gone.stderr.startswith(b"tether: no mux is running")


def test_started_on_demand_and_ends_when_idle(home: Path, server: object) -> None:
    with pytest.raises(mux.MuxUnavailable):
        mux.request(home, {"op": "status"})
    sock, _ = mux.open_shared(home, HOST, server.port, persist=1)  # type: ignore[attr-defined]
    pid = mux.request(home, {"op": "status"})["pid"]
    sock.close()
    assert wait_until(lambda: not _pid_alive(pid), 15), "the idle mux did not end"
    assert not os.path.exists(mux.socket_path(home))


def test_refuses_another_home_or_identity(home: Path, server: object,
                                          make_client_home: Callable[..., Path]) -> None:
    sock, _ = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
    sock.close()
    other = make_client_home("otherhome", authorized=True)
    for request in (
        {"home": str(other), "identity": mux.identity_fingerprint(home)},
        {"home": os.path.realpath(home), "identity": mux.identity_fingerprint(other)},
    ):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(mux.socket_path(home))
            s.sendall(json.dumps({"op": "connect", "host": HOST,
                                  "port": server.port, **request}).encode()  # type: ignore[attr-defined]
                      + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and reply["code"] == "mux_unavailable"
        assert "another tether home or identity" in reply["message"]


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root (to act as another user) and /usr/bin/python3")
def test_refuses_another_user_even_through_an_open_socket(home: Path, server: object) -> None:
    sock, _ = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
    sock.close()
    path = mux.socket_path(home)
    # open every door the file system has (as a careless chmod would) and leave SO_PEERCRED
    os.chmod(path, 0o666)
    opened = [p for p in (home, *home.parents) if p != Path("/")]
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in opened}
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
             "try:\n    s.sendall(b'{\"op\":\"status\"}\\n')\n    print(repr(s.recv(4096)))\n"
             "except (ConnectionResetError, BrokenPipeError):\n    print(repr(b''))")
    try:
        for p in opened:
            os.chmod(p, modes[p] | 0o005)
        done = subprocess.run(["/usr/bin/python3", "-c", probe, path], capture_output=True,
                              text=True, timeout=30, user="nobody",
                              group=pwd.getpwnam("nobody").pw_gid, extra_groups=[])
    finally:
        for p in opened:
            os.chmod(p, modes[p])
    assert done.returncode == 0, done.stderr  # it could connect...
    assert done.stdout.strip() == "b''"  # ...and was closed without a word
    assert mux.request(home, {"op": "status"})["ok"]  # the owner still can


def test_a_client_breaking_the_rules_is_dropped_alone(home: Path, server: object) -> None:
    from tether.client.blocking import connect_shared
    from tether.protocol.frames import encode_msg

    rogue, _ = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
    with rogue:
        rogue.sendall(encode_msg(0, {"t": "hello", "versions": [1]}))
        rogue.settimeout(10)
        assert rogue.recv(65536)  # the server's welcome, replayed
        rogue.sendall(encode_msg(2, {"t": "close"}))  # a stream never opened (and even)
        assert wait_until(lambda: _closed(rogue), 10)
    good = connect_shared(HOST, server.port, home)  # type: ignore[attr-defined]
    good.close()
    (conn,) = mux.request(home, {"op": "status"})["connections"]
    assert conn["clients"] == 0


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_sigterm_ends_the_mux_and_removes_its_socket(home: Path, server: object) -> None:
    sock, _ = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
    sock.close()
    pid = mux.request(home, {"op": "status"})["pid"]
    os.kill(pid, 15)
    assert wait_until(lambda: not _pid_alive(pid), 10)
    assert not os.path.exists(mux.socket_path(home))


def _rogue_exec(sock: socket.socket) -> None:
    """Through the mux: the handshake, then an exec stream (1) running ``sleep 30``."""
    from tether.protocol.frames import encode_msg

    sock.sendall(encode_msg(0, {"t": "hello", "versions": [1]}))
    sock.settimeout(10)
    assert sock.recv(65536)  # the server's welcome, replayed
    sock.sendall(encode_msg(1, {"t": "exec", "argv": ["sleep", "30"]}))


def _data(stream: int, channel: int, size: int) -> bytes:
    from tether.protocol.frames import encode_data_prefix

    return encode_data_prefix(stream, channel, size) + b"x" * size


# What a broken or hostile local client sends on its own, open exec stream: each one the server
# would answer by ending the whole connection, so the mux must refuse it for that client alone.
ROGUE = {
    "a message its operation has no place for": lambda: _encode(1, {"t": "commit",
                                                                  "sha256": "0" * 64}),
    "a server's message": lambda: _encode(1, {"t": "exit", "status": 0}),
    "data after its eof": lambda: _encode(1, {"t": "eof", "channel": 0}) + _data(1, 0, 10),
    "data on stdout": lambda: _data(1, 1, 10),
    "more data than its window": lambda: b"".join(_data(1, 0, 1 << 20) for _ in range(5)),
    "a credit out of range": lambda: _encode(1, {"t": "credit", "size": 0}),
}


def _encode(stream: int, header: dict[str, object]) -> bytes:
    from tether.protocol.frames import encode_msg

    return encode_msg(stream, header)


@pytest.mark.parametrize("breach", list(ROGUE), ids=list(ROGUE))
def test_a_stream_rule_broken_by_one_client_spares_the_others(home: Path, server: object,
                                                              breach: str) -> None:
    env = {**os.environ, "TETHER_HOME": str(home)}
    good = subprocess.Popen(
        [*TETHER, "run", "--mux", "auto", "-p", str(server.port), HOST, "--",  # type: ignore[attr-defined]
         "sh", "-c", "sleep 2; echo still here"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: _streams(home) == 1, 15), "the good command did not start"
        rogue, _ = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
        with rogue:
            _rogue_exec(rogue)
            with contextlib.suppress(OSError):
                rogue.sendall(ROGUE[breach]())
            errors = _errors_until_closed(rogue)
        # the rogue was told why, in one line, and dropped
        assert len(errors) == 1 and errors[0].code == "protocol", errors
        assert "\n" not in errors[0].message and errors[0].message
        out, err = good.communicate(timeout=30)
    finally:
        if good.poll() is None:
            good.kill()
            good.wait()
    assert (good.returncode, out) == (0, b"still here\n"), err
    assert len(mux.request(home, {"op": "status"})["connections"]) == 1
    assert wait_until(lambda: _streams(home) == 0, 10)  # the rogue's sleep was abandoned too


def _streams(home: Path) -> int:
    try:
        conns = mux.request(home, {"op": "status"})["connections"]
    except mux.MuxUnavailable:
        return -1
    return sum(c["streams"] for c in conns)


def _errors_until_closed(sock: socket.socket) -> list:
    """The stream-0 errors a client reads until the mux closes its socket (10 s at most)."""
    from tether.protocol import Error
    from tether.protocol.decode import decode_message
    from tether.protocol.frames import FrameDecoder

    decoder, got = FrameDecoder(), b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            got += chunk
    decoder.feed(got)
    errors = []
    while (frame := decoder.next_frame()) is not None:
        if frame.header is not None and frame.stream == 0:
            msg = decode_message(frame.header, 0)
            if isinstance(msg, Error):
                errors.append(msg)
    return errors


def test_a_hello_for_another_account_than_the_connect_request_is_refused(
        home: Path, server: object) -> None:
    from tether.protocol.frames import encode_msg

    sock, _ = mux.open_shared(home, HOST, server.port)  # type: ignore[attr-defined]
    with sock:  # connected for the server's own account; the hello asks for root
        sock.sendall(encode_msg(0, {"t": "hello", "versions": [1], "user": "root"}))
        sock.settimeout(10)
        errors = _errors_until_closed(sock)
    assert len(errors) == 1 and "another account" in errors[0].message, errors
