"""Through a long path: real ``tether`` processes talk to a real server through the latency proxy
of the benchmarks (``bench/wanproxy.py``: 60 ms round trip, TCP's handshake charged). Bytes must
arrive whole in both directions while windows grow past the initial one, and the request that
rides behind the hello must run once when authorized and never when refused. Nothing here is
timed: the benchmarks measure speed (docs/benchmarks.md, workload wan). A scripted server
answers the one-shot client's pipelined exec together with its welcome: what comes in that one
piece is used, not dropped."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import HOST, pin, tether_cli
from tether.identity import load_identity
from tether.protocol.connection import NEED_DATA
from tether.protocol.connection import Connection as ProtocolState
from tether.protocol.messages import (
    Data,
    Error,
    Exec,
    Exit,
    Hello,
    Message,
    Role,
    Started,
    Welcome,
)

if TYPE_CHECKING:
    from conftest import Client, ClientHomeFactory

REPO = Path(__file__).resolve().parents[2]
RTT_MS = 60
SIZE = 24 * 1024 * 1024  # six initial windows: the window has to grow to carry it in few trips


@pytest.fixture
def proxy_port(client: Client) -> Iterator[int]:
    """The proxy in front of the shared server, pinned for the client at its own port."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.wanproxy", f"{client.port}:{RTT_MS}"],
                            cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        assert proc.stdout.readline().strip() == b"ready"
        pin(client.home, port, client.server.fingerprint)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_and_get_through_a_long_path_are_byte_identical(
    client: Client, proxy_port: int, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    data = os.urandom(SIZE)
    src = tmp_path / "far.bin"
    src.write_bytes(data)
    remote = client.server.root / "wan-put"
    remote.mkdir(exist_ok=True)
    put = cli("put", "-p", str(proxy_port), str(src), f"{HOST}:wan-put/", home=client.home)
    assert put.returncode == 0, put.stderr
    assert _sha((remote / "far.bin").read_bytes()) == _sha(data)
    back = tmp_path / "back.bin"
    get = cli("get", "-p", str(proxy_port), f"{HOST}:wan-put/far.bin", str(back),
              home=client.home)
    assert get.returncode == 0, get.stderr
    assert _sha(back.read_bytes()) == _sha(data)


def test_output_and_input_through_a_long_path_are_whole(
    client: Client, proxy_port: int, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    argv = client.argv("sha256sum")
    argv[argv.index("-p") + 1] = str(proxy_port)
    done = subprocess.run(argv, input=data, capture_output=True, env=client.env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == _sha(data)
    (tmp_path / "out.bin").write_bytes(data)
    argv = client.argv("cat", str(tmp_path / "out.bin"))
    argv[argv.index("-p") + 1] = str(proxy_port)
    done = subprocess.run(argv, capture_output=True, env=client.env(), timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert _sha(done.stdout) == _sha(data)


def test_the_pipelined_request_runs_once(client: Client, proxy_port: int, tmp_path: Path) -> None:
    log = tmp_path / "ran"
    argv = client.argv(f"echo once >> {log}; echo hi")
    argv[argv.index("-p") + 1] = str(proxy_port)
    done = subprocess.run(argv, capture_output=True, env=client.env(), timeout=60,
                          stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (0, b"hi\n"), done.stderr
    assert log.read_text() == "once\n"


def test_a_refused_client_s_pipelined_request_never_runs(
    client: Client, proxy_port: int, make_client_home: ClientHomeFactory
) -> None:
    stranger = make_client_home("far-stranger")
    pin(stranger, proxy_port, client.server.fingerprint)
    marker = client.server.root / "far-stranger-was-here"
    done = tether_cli("run", "-p", str(proxy_port), HOST, "--", f"touch {marker}",
                      home=stranger)
    assert done.returncode == 255
    line = done.stderr.decode()
    assert line.count("\n") == 1 and "not authorized" in line
    assert load_identity(stranger).fingerprint in line
    assert not marker.exists(), "the refused client's command ran"


# --- a server whose welcome and answers arrive in one piece -------------------------------------


def _scripted_server(answers: Callable[[int], list[Message | Data]]) -> tuple[int, list[Any]]:
    """A plaintext loopback server, made of the protocol core, that reads the client's hello and
    the exec pipelined behind it, then writes the welcome and ``answers(stream)`` in a single
    ``send`` (as a far server's answers reach a client together); returns (port, what it got)."""
    listener = socket.create_server((HOST, 0))
    got: list[Any] = []

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        with conn:
            proto = ProtocolState(Role.SERVER)
            while len(got) < 2:  # the hello, then the exec behind it
                event = proto.next_event()
                if event is NEED_DATA:
                    proto.receive_data(conn.recv(65536))
                    continue
                got.append(event)
                if len(got) == 1:
                    flight = proto.send(Welcome(version=1))
            stream = got[1].stream
            for msg in answers(stream):
                flight += (proto.send_data(msg.stream, msg.channel, msg.data)
                           if isinstance(msg, Data) else proto.send(msg))
            conn.sendall(flight)
            while conn.recv(65536):  # until the client leaves
                pass

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], got


def test_output_and_exit_that_came_with_the_welcome_are_not_lost(tmp_path: Path) -> None:
    port, got = _scripted_server(lambda s: [Started(pid=7, stream=s),
                                            Data(s, 1, b"early bird\n"),
                                            Exit(status=3, stream=s)])
    done = tether_cli("run", "--plaintext", "-p", str(port), HOST, "--", "anything",
                      home=tmp_path, timeout=20)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"early bird\n", b"")
    assert isinstance(got[0], Hello) and isinstance(got[1], Exec)  # it came behind the hello


def test_a_connection_error_that_came_with_the_welcome_is_reported(tmp_path: Path) -> None:
    port, _ = _scripted_server(lambda s: [Error(code="shutting_down",
                                                message="server is shutting down")])
    done = tether_cli("run", "--plaintext", "-p", str(port), HOST, "--", "true",
                      home=tmp_path, timeout=20)
    assert done.returncode == 255
    assert done.stderr.decode().count("\n") == 1 and "shutting down" in done.stderr.decode()
