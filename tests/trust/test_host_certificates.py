"""Host certificates: a client trusting the fleet's CA for a pattern of names connects to a new
server with no prompt and no pin; a certificate for another name, expired or revoked is refused
naming why; clients that pinned the server's key still see the certificate they pinned."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import tether as tether_api
from support import ServeProcess
from tether import ca as ca_lib
from tether.identity import load_identity, lookup_known_host

from .lab import Lab, ok, one_line, tether

UTC = datetime.UTC


def _host_cert(lab: Lab, server: ServeProcess, *names: str, valid: str = "30d",
               start: datetime.datetime | None = None) -> str:
    der = load_identity(server.home, "server").cert_der
    cert = ca_lib.sign(lab.ca_dir, der, "host", names, ca_lib.parse_duration(valid), None, None,
                       start)
    import base64

    return f"tether-cert {base64.b64encode(ca_lib.der(cert)).decode()} {server.home.name}"


def _fleet_client(lab: Lab, name: str, patterns: str = "127.0.0.*") -> Path:
    home = lab.client(name, ("dev",))
    ok(tether("trust-ca", str(lab.ca_cert), "--hosts", patterns, home=home))
    return home


def test_a_client_trusting_the_ca_connects_to_a_new_server_with_no_prompt(lab: Lab) -> None:
    server = lab.server("web1", principals="dev\n")
    line = ok(tether("id", "--server", home=server.home)).strip()
    signed = ok(tether("ca", "sign-host", str(lab.ca_dir), line, "--name", "127.0.0.1",
                       "--name", "web1.lab", "--valid", "30d")).strip()
    ok(tether("cert", "install", "--server", signed, home=server.home))
    alice = _fleet_client(lab, "alice")
    done = lab.run(alice, server, "echo", "no prompt")  # no --accept-new, no terminal
    assert (done.returncode, done.stdout) == (0, b"no prompt\n"), done.stderr
    assert lookup_known_host(alice, "127.0.0.1", server.port) is None  # nothing pinned

    async def by_api() -> bytes:
        async with tether_api.connect("127.0.0.1", server.port, home=alice) as conn:
            return (await conn.run(["echo", "api"])).stdout

    assert asyncio.run(by_api()) == b"api\n"


def test_a_client_that_pinned_the_server_still_sees_the_pinned_certificate(lab: Lab) -> None:
    server = lab.server("web1", principals="dev\n")
    old = lab.client("old", ("dev",))
    assert lab.run(old, server, "true", opts=("--accept-new",)).returncode == 0
    ok(tether("cert", "install", "--server", _host_cert(lab, server, "127.0.0.1"),
              home=server.home))
    done = lab.run(old, server, "echo", "same pin")
    assert (done.returncode, done.stdout) == (0, b"same pin\n"), done.stderr
    assert lookup_known_host(old, "127.0.0.1", server.port) == server.fingerprint


def test_a_host_certificate_for_another_name_is_refused(lab: Lab) -> None:
    server = lab.server("web1", principals="dev\n")
    ok(tether("cert", "install", "--server", _host_cert(lab, server, "web2.lab", "10.9.9.9"),
              home=server.home))
    alice = _fleet_client(lab, "alice")
    done = lab.run(alice, server, "true")
    assert done.returncode == 255
    assert "is for web2.lab, 10.9.9.9, not 127.0.0.1" in one_line(done)


def test_an_expired_host_certificate_is_refused_naming_the_time(lab: Lab) -> None:
    server = lab.server("web1", principals="dev\n")
    start = datetime.datetime.now(UTC).replace(microsecond=0) - datetime.timedelta(days=3)
    ok(tether("cert", "install", "--server",
              _host_cert(lab, server, "127.0.0.1", valid="1d", start=start), home=server.home))
    alice = _fleet_client(lab, "alice")
    done = lab.run(alice, server, "true")
    assert done.returncode == 255
    ended = ca_lib.stamp(start + datetime.timedelta(days=1))
    assert f"host certificate of [127.0.0.1]:{server.port} expired at {ended}" in one_line(done)


def test_a_revoked_host_certificate_is_refused(lab: Lab) -> None:
    server = lab.server("web1", principals="dev\n")
    line = _host_cert(lab, server, "127.0.0.1")
    ok(tether("cert", "install", "--server", line, home=server.home))
    alice = _fleet_client(lab, "alice")
    ok(tether("trust-ca", str(lab.ca_cert), "--crl", str(lab.ca_dir / "crl.pem"), home=alice))
    assert lab.run(alice, server, "true").returncode == 0
    serial = ca_lib.x509.load_pem_x509_certificate(
        (server.home / "server_host_cert.pem").read_bytes()).serial_number
    ok(tether("ca", "revoke", str(lab.ca_dir), f"{serial:x}"))
    ok(tether("trust-ca", str(lab.ca_cert), "--crl", str(lab.ca_dir / "crl.pem"), home=alice))
    done = lab.run(alice, server, "true")
    assert done.returncode == 255
    assert "host certificate is revoked" in one_line(done)


def test_a_server_without_a_host_certificate_is_refused_for_a_trusted_pattern(lab: Lab) -> None:
    server = lab.server("plain", principals="dev\n")
    alice = _fleet_client(lab, "alice")
    done = lab.run(alice, server, "true")
    assert done.returncode == 255
    assert "presented no host certificate from a CA trusted for it" in one_line(done)


def test_a_crl_not_signed_by_the_ca_is_not_installed(lab: Lab, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ok(tether("ca", "init", str(other)))
    ok(tether("ca", "crl", str(other)))
    alice = lab.client("alice")
    done = tether("trust-ca", str(lab.ca_cert), "--crl", str(other / "crl.pem"), home=alice)
    assert done.returncode == 1
    assert "not signed by that CA" in one_line(done)


def test_through_the_mux_a_host_certificate_is_checked_as_directly(lab: Lab) -> None:
    from tether.client import mux

    server = lab.server("web1", principals="dev\n")
    ok(tether("cert", "install", "--server", _host_cert(lab, server, "127.0.0.1"),
              home=server.home))
    alice = _fleet_client(lab, "alice")
    wrong = lab.server("web2", principals="dev\n")
    ok(tether("cert", "install", "--server", _host_cert(lab, wrong, "web2.lab"),
              home=wrong.home))
    try:
        done = lab.run(alice, server, "echo", "shared", opts=("--mux", "auto"))
        assert (done.returncode, done.stdout) == (0, b"shared\n"), done.stderr
        assert lookup_known_host(alice, "127.0.0.1", server.port) is None  # nothing pinned
        (conn,) = mux.request(alice, {"op": "status"})["connections"]
        assert conn["port"] == server.port
        refused = lab.run(alice, wrong, "true", opts=("--mux", "auto"))
        assert refused.returncode == 255
        assert "is for web2.lab, not 127.0.0.1" in one_line(refused)
    finally:
        mux.request(alice, {"op": "stop"})
