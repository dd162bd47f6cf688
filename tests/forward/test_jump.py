"""Jump hosts: ``--via`` through two tether servers (TLS end to end, each hop pinned, the hops'
audit logs showing relayed connections only), and ``tether proxy`` as OpenSSH's ProxyCommand
against a private sshd on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from conftest import cli_env
from support import TETHER, stop_process, wait_until
from tether.errors import HostUnknown

from .conftest import Served, serve_with


@pytest.fixture(scope="module")
def hops(tmp_path_factory: pytest.TempPathFactory, client_home: Path
         ) -> Iterator[list[Served]]:
    """Three servers: two jump hosts and a target."""
    made = [serve_with(tmp_path_factory.mktemp(f"hop{i}"), client_home) for i in range(3)]
    servers = [next(gen) for gen in made]
    yield servers
    for gen in made:
        for _ in gen:
            pass


def via(hops: list[Served]) -> str:
    return ",".join(f"127.0.0.1:{h.server.port}" for h in hops[:2])


def test_run_through_two_hops_is_relayed_only(hops: list[Served]) -> None:
    target = hops[2]
    done = subprocess.run([*TETHER, "run", "--via", via(hops), "-p", str(target.server.port),
                           "127.0.0.1", "--", "sh", "-c", "echo through; exit 3"],
                          capture_output=True, timeout=60, env=cli_env(target.client.home),
                          stdin=subprocess.DEVNULL)
    assert done.stdout == b"through\n" and done.returncode == 3, done.stderr
    assert wait_until(lambda: any(r["event"] == "command" for r in _events(target)), 10)
    first, middle = hops[0], hops[1]
    assert wait_until(lambda: len(middle.records("forward")) >= 1, 10)
    for hop, nxt in ((first, middle), (middle, target)):
        kinds = {r["event"] for r in _events(hop)}
        assert kinds <= {"connection", "disconnection", "forward"}, kinds  # relayed only
        record = hop.records("forward")[-1]
        assert record["to"] == f"127.0.0.1:{nxt.server.port}"
        assert record["bytes_in"] > 0 and record["bytes_out"] > 0


def _events(served: Served) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in served.audit.read_text().splitlines()]


async def test_the_last_host_is_pinned_even_through_hops(hops: list[Served],
                                                         tmp_path: Path) -> None:
    home = tmp_path / "client"
    shutil.copytree(hops[0].client.home, home)
    known = home / "known_hosts"
    kept = [line for line in known.read_text().splitlines()
            if f":{hops[2].server.port} " not in line]
    known.write_text("".join(f"{line}\n" for line in kept))
    with pytest.raises(HostUnknown):
        async with tether.connect("127.0.0.1", hops[2].server.port, home=home,
                                  via=[via(hops)]):
            pass
    async with tether.connect("127.0.0.1", hops[2].server.port, home=hops[0].client.home,
                              via=[via(hops)]) as conn:
        assert conn.server.fingerprint == hops[2].server.fingerprint
        assert (await conn.run("echo pinned")).stdout == b"pinned\n"


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private sshd on loopback accepting one key (as bench/ runs it)."""
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.skip("needs openssh-server and openssh-client")
    hostkey, userkey = tmp_path / "host_key", tmp_path / "user_key"
    for key in (hostkey, userkey):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{userkey}.pub").read_text())
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hostkey}\n"
                      f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
                      f"StrictModes no\nUsePAM no\nPidFile {tmp_path / 'sshd.pid'}\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        with socket.socket() as probe:
            assert wait_until(lambda: probe.connect_ex(("127.0.0.1", port)) == 0, 10)
        yield port, userkey
    finally:
        stop_process(proc)


def test_ssh_proxycommand_rides_tether(hops: list[Served], sshd: tuple[int, Path]) -> None:
    port, key = sshd
    bastion = hops[0]
    proxy = " ".join([*TETHER, "proxy", "-p", str(bastion.server.port), "127.0.0.1", "%h",
                      "%p"])
    done = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", f"ProxyCommand={proxy}", "127.0.0.1", "echo over-ssh"],
        capture_output=True, timeout=60, env=cli_env(bastion.client.home),
        stdin=subprocess.DEVNULL)
    assert done.stdout == b"over-ssh\n", done.stderr
    assert wait_until(lambda: any(r["to"] == f"127.0.0.1:{port}"
                                  for r in bastion.records("forward")), 10)


def test_an_inventory_host_is_reached_through_its_via(hops: list[Served],
                                                      tmp_path: Path) -> None:
    home = tmp_path / "client"
    shutil.copytree(hops[0].client.home, home)
    (home / "hosts.toml").write_text(
        f'[hosts.inner]\naddress = "127.0.0.1"\nport = {hops[2].server.port}\n'
        f'via = ["127.0.0.1:{hops[1].server.port}"]\n')
    before = len(hops[1].records("forward"))
    done = subprocess.run([*TETHER, "run", "inner", "--", "echo", "inside"],
                          capture_output=True, timeout=60, env=cli_env(home),
                          stdin=subprocess.DEVNULL)
    assert done.stdout == b"inside\n", done.stderr
    assert wait_until(lambda: len(hops[1].records("forward")) > before, 10)
    assert hops[1].records("forward")[-1]["to"] == f"127.0.0.1:{hops[2].server.port}"


def test_put_and_get_through_a_jump_host(hops: list[Served], tmp_path: Path) -> None:
    target = hops[2]
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    common = ["--via", f"127.0.0.1:{hops[0].server.port}", "-p", str(target.server.port)]
    env = cli_env(target.client.home)
    put = subprocess.run([*TETHER, "put", *common, str(source), "127.0.0.1:via-payload.bin"],
                         capture_output=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert put.returncode == 0, put.stderr
    back = tmp_path / "back.bin"
    get = subprocess.run([*TETHER, "get", *common, "127.0.0.1:via-payload.bin", str(back)],
                         capture_output=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert get.returncode == 0, get.stderr
    assert back.read_bytes() == source.read_bytes()
    assert wait_until(lambda: sum(r["bytes_in"] for r in hops[0].records("forward"))
                      > 2 * 1024 * 1024, 10)
