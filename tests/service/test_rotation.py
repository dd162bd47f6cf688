"""Server key rotation: a client that connects during the overlap pins the next key (proved by
the old one) and later meets the rotated server silently; one that did not gets the CHANGED
error. Real servers, real CLI clients, real known_hosts files."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support import wait_until
from tether.client.discover import discover
from tether.client.handshake import learn_next_key
from tether.home import known_fingerprints
from tether.identity import generate_identity
from tether.protocol.messages import Welcome
from tether.server.rotation import REFRESH_EVERY, load_next, start_rotation

if TYPE_CHECKING:
    from conftest import Client, ClientHomeFactory, ServerFactory
    from support import ServeProcess

Cli = Callable[..., subprocess.CompletedProcess[bytes]]


def _run(client: Client, *opts: str) -> subprocess.CompletedProcess[bytes]:
    return client.run("echo", "hello", opts=opts)


def _pins(client: Client) -> list[str]:
    return known_fingerprints(client.home, "127.0.0.1", client.port)


def _new_client(client: Client, server: ServeProcess, make_client_home: ClientHomeFactory,
                name: str, cli: Cli) -> Client:
    """A fresh identity, authorized on ``server``, that has pinned it (its first connection)."""
    home = make_client_home(name)
    other = client.other(server=server, home=home)
    line = cli("id", home=home).stdout.decode().strip()
    assert cli("authorize", line, home=server.home).returncode == 0
    first = _run(other, "--accept-new")
    assert first.returncode == 0, first.stderr
    return other


def test_rotation_pins_the_next_key_for_clients_that_connect_during_the_overlap(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory, cli: Cli
) -> None:
    server = make_server()
    old = server.fingerprint
    early = _new_client(client, server, make_client_home, "early", cli)
    absent = _new_client(client, server, make_client_home, "absent", cli)
    assert _pins(early) == [old] and _pins(absent) == [old]

    started = cli("rotate-key", "--overlap", "3600", home=server.home)
    assert started.returncode == 0, started.stderr
    new = load_next(server.home)
    assert new is not None and new.fingerprint in started.stdout.decode()
    time.sleep(REFRESH_EVERY + 0.1)  # the running server looks at its files at most this often

    during = _run(early)
    assert (during.returncode, during.stdout, during.stderr) == (0, b"hello\n", b"")
    assert _pins(early) == [old, new.fingerprint]  # pinned beside the old one
    assert "rotated-from=" + old in (early.home / "known_hosts").read_text()
    again = _run(early)  # during the overlap, with both pinned: still the old key, silently
    assert (again.returncode, again.stderr) == (0, b"")

    retired = cli("rotate-key", "--retire", home=server.home)
    assert retired.returncode == 0, retired.stderr
    assert not (server.home / "server_next_key.pem").exists()
    time.sleep(REFRESH_EVERY + 0.1)

    after = _run(early)
    assert (after.returncode, after.stdout, after.stderr) == (0, b"hello\n", b"")
    assert _pins(early) == [new.fingerprint], "the retired key is forgotten"
    assert "server identity is now " + new.fingerprint in server.log_text()

    missed = _run(absent)
    assert missed.returncode == 255
    assert b"THE SERVER'S IDENTITY HAS CHANGED" in missed.stderr
    assert new.fingerprint.encode() in missed.stderr
    assert _pins(absent) == [old]


def test_the_overlap_ends_by_itself_and_serve_can_start_a_rotation(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory,
    tmp_path: Path, cli: Cli,
) -> None:
    """``tether serve --rotate-key --key-overlap 10``: the next key is announced from the start
    and takes over after 10 s (room for a loaded machine to connect during the overlap),
    without a signal or a command."""
    home = tmp_path / "rotating"
    first = make_server(home=home)
    old = first.fingerprint
    early = _new_client(client, first, make_client_home, "early", cli)
    first.stop()
    server = make_server("--rotate-key", "--key-overlap", "10", "--discoverable", home=home,
                         pinned=False, port=first.port)
    early = early.other(server=server)
    assert server.fingerprint == old
    assert "key rotation started: next key" in server.log_text()
    during = _run(early)
    assert (during.returncode, during.stderr) == (0, b""), during.stderr
    assert len(_pins(early)) == 2
    new = _pins(early)[1]
    assert wait_until(lambda: _run(early).returncode == 0 and _pins(early) == [new], 30)
    assert "server identity is now " + new in server.log_text()
    found = asyncio.run(discover(["127.0.0.1"], server.port, wait=0.5, retries=3))
    assert [f.fingerprint for f in found] == [new]  # discovery announces the new key too


def test_a_second_rotation_during_an_overlap_is_refused(tmp_path: Path, cli: Cli) -> None:
    generate_identity(tmp_path, "srv", "server")
    assert cli("rotate-key", home=tmp_path).returncode == 0
    again = cli("rotate-key", home=tmp_path)
    assert again.returncode == 1
    assert b"a key rotation is already under way" in again.stderr
    assert b"tether rotate-key --retire" in again.stderr


@pytest.mark.parametrize("damage", ["proof", "cert", "other-signer"])
def test_a_next_key_that_is_not_proved_is_not_pinned(tmp_path: Path, damage: str) -> None:
    server_home, client_home = tmp_path / "server", tmp_path / "client"
    current = generate_identity(server_home, "srv", "server")
    pending = start_rotation(server_home, 60)
    cert, proof = pending.cert_der, pending.proof
    if damage == "proof":
        proof = bytes([proof[0] ^ 1]) + proof[1:]
    elif damage == "cert":
        cert = cert[:-1] + bytes([cert[-1] ^ 1])
    else:
        cert = generate_identity(tmp_path / "mallory", "srv", "server").cert_der
    welcome = Welcome(version=1, next_cert=base64.b64encode(cert).decode(),
                      next_proof=base64.b64encode(proof).decode())
    client_home.mkdir()
    assert not learn_next_key(client_home, "h", 7722, current.cert_der, welcome)
    assert known_fingerprints(client_home, "h", 7722) == []
    good = Welcome(version=1, next_cert=base64.b64encode(pending.cert_der).decode(),
                   next_proof=base64.b64encode(pending.proof).decode())
    assert learn_next_key(client_home, "h", 7722, current.cert_der, good)
    assert known_fingerprints(client_home, "h", 7722) == [pending.fingerprint]


def test_welcome_carries_the_rotation_fields_only_during_a_rotation() -> None:
    plain = Welcome(version=1, server_name="s").to_header()
    assert "next_cert" not in plain and "next_proof" not in plain  # the same bytes as before
    rotating = Welcome(version=1, next_cert="Y2VydA==", next_proof="cHJvb2Y=").to_header()
    assert (rotating["next_cert"], rotating["next_proof"]) == ("Y2VydA==", "cHJvb2Y=")


def test_an_overlap_that_ended_while_the_server_was_down_ends_at_its_start(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory,
    tmp_path: Path, cli: Cli,
) -> None:
    """The server is stopped during the overlap and started after it ended: it presents the
    new key from its first connection on (and says so), and the early client is silent."""
    home = tmp_path / "down"
    first = make_server(home=home)
    old = first.fingerprint
    early = _new_client(client, first, make_client_home, "early", cli)
    assert cli("rotate-key", "--overlap", "3600", home=home).returncode == 0
    time.sleep(REFRESH_EVERY + 0.1)
    assert _run(early).returncode == 0
    new = _pins(early)[1]
    first.stop()
    state = home / "server_next.json"  # the overlap passes while the server is down
    state.write_text(json.dumps({**json.loads(state.read_text()), "until": time.time() - 1}))

    server = make_server(home=home, pinned=False, port=first.port)
    assert server.fingerprint == new != old
    assert f"key rotation ended while stopped: the server key is now {new}" in server.log_text()
    assert not state.exists() and not (home / "server_next_key.pem").exists()
    after = _run(early.other(server=server))
    assert (after.returncode, after.stdout, after.stderr) == (0, b"hello\n", b"")
    assert _pins(early) == [new]


def test_a_host_certificate_for_the_old_key_is_set_aside_when_the_new_key_takes_over(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory,
    tmp_path: Path, cli: Cli,
) -> None:
    """A CA-signed host certificate is for the old key: presented with the new one it would
    fail every handshake. It is moved aside (and the log says how to get a new one); clients
    that pin fingerprints connect silently."""
    home = tmp_path / "hostcert"
    server = make_server(home=home)
    early = _new_client(client, server, make_client_home, "early", cli)
    ca = tmp_path / "ca"
    assert cli("ca", "init", str(ca)).returncode == 0
    line = cli("id", "--server", home=home).stdout.decode().strip()
    signed = cli("ca", "sign-host", str(ca), line, "--name", "127.0.0.1", "--valid", "1d")
    assert signed.returncode == 0, signed.stderr
    installed = cli("cert", "install", "--server", signed.stdout.decode().strip(), home=home)
    assert installed.returncode == 0, installed.stderr
    host_cert = home / "server_host_cert.pem"
    assert host_cert.exists()

    started = cli("rotate-key", "--overlap", "3600", home=home)
    assert started.returncode == 0 and b"host certificate" in started.stderr
    time.sleep(REFRESH_EVERY + 0.1)
    assert _run(early).returncode == 0
    retired = cli("rotate-key", "--retire", home=home)
    assert retired.returncode == 0, retired.stderr
    assert b"tether cert install --server" in retired.stderr  # how to get one for the new key
    time.sleep(REFRESH_EVERY + 0.1)
    after = _run(early)
    assert (after.returncode, after.stdout, after.stderr) == (0, b"hello\n", b"")
    assert not host_cert.exists() and (home / "server_host_cert.pem.retired").exists()
