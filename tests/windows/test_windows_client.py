"""The client on Windows (the Windows python under Wine) against a Linux ``tether serve``: ``run``
(the full path: the fast path's select on pipes is Unix-only) with its exit status, ``put`` and
``get`` and ``-r`` byte-identical; ``shell`` in line mode (no terminal mode on Windows); and the
identity it makes, whose private key gets a DACL of its own (no Unix modes there)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ServeProcess, start_serve

from . import winpy
from .winserver import HOST, START_TIMEOUT, linux_env, require_wine, tether

# Wine starts slowly on a loaded machine: the module's first test also waits for the server
pytestmark = pytest.mark.timeout(400)


def _digest(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(top.rglob("*"))}


class WinClient:
    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port

    def __call__(self, *args: str, input: bytes | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
        """``tether ARGS`` run by the Windows python; stderr folded into stdout."""
        proc = winpy.popen(["-m", "tether", *args],
                           env={**os.environ, "TETHER_HOME": winpy.windows_path(self.home)},
                           stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
        out, _ = proc.communicate(input, timeout=START_TIMEOUT)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, b"")


@pytest.fixture(scope="module")
def linux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Path]]:
    require_wine()
    base = tmp_path_factory.mktemp("winclient")
    client_home = base / "client"
    client_home.mkdir()
    made = WinClient(client_home, 0)("keygen", "--name", "windows-client")
    assert made.returncode == 0, made.stdout
    line = tether("id", home=client_home).stdout.decode().strip()
    assert tether("authorize", line, home=base / "server").returncode == 0
    with start_serve(base / "server", base / "root", base / "server.log",
                     env=linux_env()) as server:
        yield server, client_home


@pytest.fixture
def win(linux_server: tuple[ServeProcess, Path]) -> WinClient:
    server, home = linux_server
    return WinClient(home, server.checked().port)


def test_run_streams_output_and_returns_the_status(win: WinClient) -> None:
    done = win("run", "--accept-new", "-p", str(win.port), HOST, "--",
               "printf '汉语\\n'; echo err >&2; exit 7")
    assert done.returncode == 7, done.stdout
    assert "汉语\n".encode() in done.stdout and b"err" in done.stdout


def test_run_forwards_stdin(win: WinClient) -> None:
    data = os.urandom(200_000)
    done = win("run", "--accept-new", "-p", str(win.port), HOST, "--", "sha256sum", input=data)
    assert done.returncode == 0, done.stdout
    assert hashlib.sha256(data).hexdigest().encode() in done.stdout


def test_shell_runs_in_line_mode(win: WinClient) -> None:
    script = b"cd /tmp\nexport WORD=persisted\necho \"$WORD in $PWD\"\nfalse\nexit 3\n"
    done = win("shell", "--accept-new", "-T", "-p", str(win.port), HOST, input=script)
    assert b"persisted in /tmp\n" in done.stdout
    assert b"line 4: 'false' exited with status 1" in done.stdout
    assert done.returncode == 3, done.stdout


def test_shell_with_a_command_says_to_use_run(win: WinClient) -> None:
    done = win("shell", "--accept-new", "-p", str(win.port), HOST, "ls")
    assert done.returncode != 0
    assert done.stdout.strip().splitlines() == [
        b"tether: a Windows client has no terminal mode, which a command needs: use tether run"]


def test_put_and_get_trees_byte_identical(win: WinClient,
                                          linux_server: tuple[ServeProcess, Path],
                                          tmp_path: Path) -> None:
    server, _ = linux_server
    tree = tmp_path / "树"
    (tree / "子").mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(1_500_000))
    (tree / "子" / "小.txt").write_bytes(b"small\r\n")
    port = str(win.port)
    done = win("put", "--accept-new", "-p", port, "-r", winpy.windows_path(tree), f"{HOST}:")
    assert done.returncode == 0, done.stdout
    assert _digest(server.root / "树") == _digest(tree)
    back = tmp_path / "back"
    back.mkdir()
    done = win("get", "-p", port, "-r", f"{HOST}:树", winpy.windows_path(back))
    assert done.returncode == 0, done.stdout
    assert _digest(back / "树") == _digest(tree)
    done = win("get", "-p", port, f"{HOST}:树/a.bin", winpy.windows_path(back))
    assert done.returncode == 0, done.stdout
    assert (back / "a.bin").read_bytes() == (tree / "a.bin").read_bytes()


def test_the_private_key_gets_an_owner_only_dacl(linux_server: tuple[ServeProcess, Path]
                                                  ) -> None:
    _, home = linux_server
    script = ("from tether.winacl import file_dacl, current_user_sid; "
              "import sys; print(current_user_sid()); "
              "print(file_dacl(sys.argv[1])); print(file_dacl(sys.argv[2]))")
    key, cert = (winpy.windows_path(home / f"id_{kind}.pem") for kind in ("key", "cert"))
    proc = winpy.popen(["-c", script, key, cert])
    out, _ = proc.communicate(timeout=START_TIMEOUT)
    assert proc.returncode == 0, out
    sid, key_dacl, cert_dacl = out.decode().split()
    entries = key_dacl.split("(")[1:]
    assert sorted(entries) == sorted([f"A;;FA;;;{sid})", "A;;FA;;;SY)"]), key_dacl
    assert "WD" in cert_dacl  # the certificate is public: Everyone may read it (the check can
    # tell the two apart)
