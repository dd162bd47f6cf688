"""A server that cannot give a pseudo-terminal: `tether shell` on a terminal says so and goes on
in line mode, where cd persists and the exit status is the shell's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tether.identity import AuthorizedClient, add_authorized, generate_identity

TETHER = str(Path(sys.executable).with_name("tether"))


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(),
                                reason="needs root and unshare to hide /dev/ptmx")


@pytest.fixture
def ptyless_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real `tether serve` in a mount namespace where /dev/ptmx is /dev/null."""
    server_home, client_home = tmp_path / "srv", tmp_path / "cli"
    client = generate_identity(client_home, "c")
    add_authorized(server_home, AuthorizedClient(client.cert_der, "c"))
    log = tmp_path / "serve.log"
    script = (f"mount --bind /dev/null /dev/ptmx && exec {TETHER} serve -p 0 "
              f"--root {tmp_path}")
    with log.open("w") as sink:
        proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stderr=sink,
                                env={**os.environ, "TETHER_HOME": str(server_home)})
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(log.read_text().split("listening on 127.0.0.1:")[1].split(",")[0])
        yield port, client_home
    finally:
        proc.terminate()
        proc.wait(10)


def test_shell_falls_back_to_line_mode(ptyless_server: tuple[int, Path]) -> None:
    port, client_home = ptyless_server
    env = {**os.environ, "TETHER_HOME": str(client_home)}
    child = pexpect.spawn(TETHER, ["shell", "-p", str(port), "--accept-new", "127.0.0.1"],
                          env=env, timeout=20, use_poll=True)
    child.expect("cannot give a pseudo-terminal")
    child.expect("line mode")
    child.sendline("cd /tmp")
    child.sendline("pwd")
    child.expect("/tmp")
    child.sendline("exit 4")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    assert b"Fatal" not in (child.before or b"")


def test_shell_command_without_a_terminal_is_a_clear_error(
        ptyless_server: tuple[int, Path]) -> None:
    port, client_home = ptyless_server
    env = {**os.environ, "TETHER_HOME": str(client_home)}
    child = pexpect.spawn(TETHER, ["shell", "-p", str(port), "--accept-new", "127.0.0.1",
                                   "--", "top"], env=env, timeout=20, use_poll=True)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert b"pseudo-terminal" in (child.before or b"")
