"""Servers trusting a CA: admission by certificate and principals, every refusal (one line on
the client, the reason in the audit log), revocation and reloads without a restart."""

from __future__ import annotations

import datetime
import os
import pwd
import re
import shutil
from pathlib import Path

from tether import ca as ca_lib
from tether.identity import load_identity

from .lab import Lab, audit_events, ok, one_line, refused_in_audit, tether

UTC = datetime.UTC


def test_servers_trusting_one_ca_admit_a_newly_signed_user_without_authorize(lab: Lab) -> None:
    servers = [lab.server(f"s{i}", principals="dev\n") for i in range(3)]
    alice = lab.client("alice", ("dev",))
    for server in servers:
        assert not (server.home / "authorized").exists()
        done = lab.run(alice, server, "echo", "hello", opts=("--accept-new",))
        assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
    events = [e for e in audit_events(servers[0].home / "audit.log") if e["event"] == "connection"]
    serial = ca_lib.cert_info(ca_lib.load_der(load_identity(alice).cert_der)).serial
    assert events[-1]["serial"] == f"{serial:x}"
    assert events[-1]["principals"] == ["dev"]
    assert events[-1]["name"] == "alice"
    assert events[-1]["user"] == pwd.getpwuid(os.geteuid()).pw_name  # the server's own


def test_authorized_entries_keep_working_beside_the_ca(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    plain = lab.client("plain")  # self-signed only
    refused = lab.run(plain, server, "true", opts=("--accept-new",))
    assert refused.returncode == 255
    ok(tether("authorize", ok(tether("id", home=plain)).strip(), home=server.home))
    done = lab.run(plain, server, "echo", "old way")
    assert (done.returncode, done.stdout) == (0, b"old way\n"), done.stderr


def test_a_principal_narrows_permissions_and_confines_to_its_root(lab: Lab, tmp_path: Path
                                                                   ) -> None:
    jail = tmp_path / "jail"
    jail.mkdir()
    server = lab.server("s", principals=f"dev root={jail} allow=exec\n")
    alice = lab.client("alice", ("dev",))
    done = lab.run(alice, server, "pwd", opts=("--accept-new",))
    assert (done.returncode, done.stdout) == (0, f"{jail}\n".encode()), done.stderr
    put = tether("put", "-p", str(server.port), str(lab.ca_cert), "127.0.0.1:x.pem", home=alice)
    assert put.returncode == 1
    assert "may not upload" in one_line(put)


def test_the_certificate_can_narrow_permissions_further(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    bob = lab.client("bob")
    ok(tether("cert", "install", lab.sign_user(bob, ("dev",), allow="get"), home=bob))
    done = lab.run(bob, server, "true", opts=("--accept-new",))
    assert done.returncode == 1
    assert "may not run commands" in one_line(done)


# --- refusals -----------------------------------------------------------------------------------


def _assert_refused(lab: Lab, home: Path, server: object, client_text: str,
                    audit_text: str | None = None, *, user: str = "") -> str:
    from support import ServeProcess

    assert isinstance(server, ServeProcess)
    marker = server.root / "ran"
    host = f"{user}@127.0.0.1" if user else "127.0.0.1"
    done = lab.run(home, server, "touch", str(marker), host=host, opts=("--accept-new",))
    line = one_line(done)
    assert done.returncode == 255, line
    assert client_text in line, line
    assert not marker.exists()
    assert refused_in_audit(server, audit_text or client_text), server.home.joinpath(
        "audit.log").read_text()
    return line


def test_an_expired_certificate_is_refused_naming_the_time(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    start = datetime.datetime.now(UTC).replace(microsecond=0) - datetime.timedelta(hours=3)
    old = lab.client("old", ("dev",), valid="1h", start=start)
    ended = start + datetime.timedelta(hours=1)
    line = _assert_refused(lab, old, server, f"certificate expired at {ca_lib.stamp(ended)}")
    assert line.startswith("tether: not authorized: ")


def test_a_certificate_not_yet_valid_is_refused_naming_the_time(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    start = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(hours=2)
    early = lab.client("early", ("dev",), valid="8h", start=start)
    _assert_refused(lab, early, server, f"certificate not valid before {ca_lib.stamp(start)}")


def test_a_certificate_from_an_untrusted_ca_is_refused(lab: Lab, tmp_path: Path) -> None:
    server = lab.server("s", principals="dev\n")
    other_ca = tmp_path / "other-ca"
    ok(tether("ca", "init", str(other_ca), "--name", "Rogue CA"))
    mallory = lab.client("mallory")
    line = ok(tether("ca", "sign-user", str(other_ca), ok(tether("id", home=mallory)).strip(),
                     "--principal", "dev", "--valid", "1h"))
    ok(tether("cert", "install", line.strip(), home=mallory))
    _assert_refused(lab, mallory, server, "does not trust the CA that signed",
                    "signed by a CA this server does not trust")


def test_a_ca_certificate_presented_as_a_client_is_refused(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    home = lab.tmp / "clients" / "ca-as-client"
    home.mkdir(parents=True)
    shutil.copy(lab.ca_dir / "ca_key.pem", home / "id_key.pem")
    shutil.copy(lab.ca_cert, home / "id_cert.pem")
    _assert_refused(lab, home, server, "a CA certificate cannot be a client identity")


def test_a_revoked_certificate_is_refused_on_the_next_connection(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n", crl=True)
    carol = lab.client("carol", ("dev",))
    first = lab.run(carol, server, "echo", "in", opts=("--accept-new",))
    assert (first.returncode, first.stdout) == (0, b"in\n"), first.stderr
    fp = load_identity(carol).fingerprint
    revoked = ok(tether("ca", "revoke", str(lab.ca_dir), fp))
    serial = re.search(r"serial ([0-9a-f]+)", revoked)
    assert serial is not None
    _assert_refused(lab, carol, server, f"certificate serial {serial.group(1)} is revoked")
    refusal = [e for e in audit_events(server.home / "audit.log") if e["event"] == "refused"]
    assert refusal[-1]["fingerprint"] == fp
    assert server.alive()


def test_a_principal_with_no_mapping_is_refused(lab: Lab) -> None:
    server = lab.server("s", principals="ops\n")
    dave = lab.client("dave", ("dev", "qa"))
    _assert_refused(lab, dave, server, "no principal of this certificate (dev, qa) is mapped")


def test_a_user_the_principal_does_not_allow_is_refused(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")  # dev: the server's own account only
    erin = lab.client("erin", ("dev",))
    _assert_refused(lab, erin, server, "may not use the account 'nobody'", user="nobody")


def test_a_certificate_without_principals_is_refused(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    frank = lab.client("frank")
    cert = _signed_without_principals(lab.ca_dir, load_identity(frank).cert_der)
    (frank / "id_signed_cert.pem").write_bytes(ca_lib.pem(cert))
    _assert_refused(lab, frank, server, "has no principals")


def _signed_without_principals(ca_dir: Path, der: bytes) -> ca_lib.x509.Certificate:
    """A client certificate the CA signed but that names no principal (tether ca never makes
    one: a CA of another tool could)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key, ca = ca_lib.load_ca(ca_dir)
    subject = ca_lib.load_der(der)
    now = datetime.datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject.subject).issuer_name(ca.subject)
            .public_key(subject.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, None))


# --- reloads ------------------------------------------------------------------------------------


def test_principals_file_is_reloaded_for_the_next_connection(lab: Lab) -> None:
    server = lab.server("s", principals="ops\n")
    gina = lab.client("gina", ("dev",))
    assert lab.run(gina, server, "true", opts=("--accept-new",)).returncode == 255
    (server.home / "principals").write_text("ops\ndev allow=exec\n")
    done = lab.run(gina, server, "echo", "mapped")
    assert (done.returncode, done.stdout) == (0, b"mapped\n"), done.stderr
    (server.home / "principals").write_text("ops\n")
    again = lab.run(gina, server, "true")
    assert again.returncode == 255
    assert "is mapped" in one_line(again)


def test_revocation_list_is_reloaded_by_content_without_restart(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n", crl=True)
    hal = lab.client("hal", ("dev",))
    crl = lab.ca_dir / "crl.pem"
    before = crl.read_bytes()
    assert lab.run(hal, server, "true", opts=("--accept-new",)).returncode == 0
    serial = ca_lib.cert_info(ca_lib.load_der(load_identity(hal).cert_der)).serial
    ok(tether("ca", "revoke", str(lab.ca_dir), f"{serial:x}"))
    assert lab.run(hal, server, "true").returncode == 255
    crl.write_bytes(before)  # an older list again: content, not mtime, decides
    done = lab.run(hal, server, "echo", "back")
    assert (done.returncode, done.stdout) == (0, b"back\n"), done.stderr
    assert server.alive()


def test_a_damaged_principals_file_keeps_the_previous_mapping(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    ivy = lab.client("ivy", ("dev",))
    assert lab.run(ivy, server, "true", opts=("--accept-new",)).returncode == 0
    (server.home / "principals").write_text("dev allow=fly\n")
    assert lab.run(ivy, server, "true").returncode == 0
    assert "keeping the previous principals" in server.log_text()


def test_a_damaged_or_deleted_revocation_list_never_lifts_a_revocation(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n", crl=True)
    jay = lab.client("jay", ("dev",))
    assert lab.run(jay, server, "true", opts=("--accept-new",)).returncode == 0
    ok(tether("ca", "revoke", str(lab.ca_dir), load_identity(jay).fingerprint))
    assert lab.run(jay, server, "true").returncode == 255
    crl = lab.ca_dir / "crl.pem"
    crl.write_text("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    assert "is revoked" in one_line(lab.run(jay, server, "true"))
    crl.unlink()
    assert "is revoked" in one_line(lab.run(jay, server, "true"))
    assert "keeping the previous revocation list" in server.log_text()


def test_serve_refuses_a_bad_ca_or_revocation_list_at_start(lab: Lab, tmp_path: Path) -> None:
    alice = lab.client("alice")
    home = tmp_path / "srv"
    bad_ca = tether("serve", "-p", "0", "--trust-ca", str(alice / "id_cert.pem"), home=home,
                    timeout=30)
    assert bad_ca.returncode == 1
    assert "is not a CA certificate" in one_line(bad_ca)
    other = tmp_path / "other-ca"
    ok(tether("ca", "init", str(other)))
    ok(tether("ca", "crl", str(other)))
    bad_crl = tether("serve", "-p", "0", "--trust-ca", str(lab.ca_cert), "--crl",
                     str(other / "crl.pem"), home=home, timeout=30)
    assert bad_crl.returncode == 1
    assert "not signed by a trusted CA" in one_line(bad_crl)
