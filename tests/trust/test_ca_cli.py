"""The commands of fleet trust as a user types them: ``tether ca``, ``cert install``, ``id``,
``trust-ca``, and the client's warning before its certificate expires."""

from __future__ import annotations

import base64
import datetime
import stat

from cryptography import x509

from tether import ca as ca_lib
from tether.identity import load_identity, parse_id_line

from .lab import Lab, ok, one_line, tether

UTC = datetime.UTC


def test_ca_init_makes_a_private_key_and_a_ca_certificate(lab: Lab) -> None:
    key, cert = lab.ca_dir / "ca_key.pem", lab.ca_cert
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    basic = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (basic.ca, basic.path_length) == (True, 0)
    assert "Test Lab CA" in parsed.subject.rfc4514_string()
    again = tether("ca", "init", str(lab.ca_dir))
    assert again.returncode == 1
    assert "already holds a CA" in one_line(again)


def test_a_passphrase_protects_the_ca_key(lab: Lab) -> None:
    directory = lab.tmp / "locked"
    ok(tether("ca", "init", str(directory), "--passphrase", TETHER_CA_PASSPHRASE="s3cret"))
    assert b"ENCRYPTED" in (directory / "ca_key.pem").read_bytes()
    alice = lab.client("alice")
    line = ok(tether("id", home=alice)).strip()
    wrong = tether("ca", "sign-user", str(directory), line, "--principal", "dev", "--valid",
                   "1h", TETHER_CA_PASSPHRASE="wrong")
    assert wrong.returncode == 1
    assert "cannot open the CA key" in one_line(wrong)
    signed = ok(tether("ca", "sign-user", str(directory), line, "--principal", "dev",
                       "--valid", "1h", TETHER_CA_PASSPHRASE="s3cret"))
    assert signed.startswith("tether-cert ")


def test_sign_user_prints_a_line_with_principals_serial_and_validity(lab: Lab) -> None:
    alice = lab.client("alice")
    own = load_identity(alice)
    out = ok(tether("ca", "sign-user", str(lab.ca_dir), own.id_line, "--principal", "dev",
                    "--principal", "ops,qa", "--valid", "8h", "--allow", "exec,get"))
    der, name = parse_id_line(out.strip())
    assert name == "alice"
    info = ca_lib.cert_info(ca_lib.load_der(der))
    assert info.principals == ("dev", "ops", "qa")
    assert info.allow == frozenset({"exec", "get"})
    assert not info.self_signed and not info.is_ca
    hours = (info.not_after - datetime.datetime.now(UTC)).total_seconds() / 3600
    assert 7.9 < hours <= 8.0
    cert = ca_lib.load_der(der)
    assert cert.public_key() == ca_lib.load_der(own.cert_der).public_key()
    assert ca_lib.issued_by(cert, x509.load_pem_x509_certificate(lab.ca_cert.read_bytes()))
    assert f"{info.serial:x}" in (lab.ca_dir / "issued").read_text()


def test_bad_input_is_one_line(lab: Lab) -> None:
    alice = lab.client("alice")
    line = ok(tether("id", home=alice)).strip()
    cases = [
        (("ca", "sign-user", str(lab.ca_dir), line, "--principal", "dev", "--valid", "soon"),
         "not a duration"),
        (("ca", "sign-user", str(lab.ca_dir), line, "--principal", "a b", "--valid", "1h"),
         "not a principal name"),
        (("ca", "sign-user", str(lab.ca_dir), "garbage", "--principal", "dev", "--valid", "1h"),
         "not a tether identity line"),
        (("ca", "sign-host", str(lab.ca_dir), line, "--name", "bad name!", "--valid", "1h"),
         "not a host name"),
        (("ca", "revoke", str(lab.ca_dir), "SHA256:nope"), "issued no certificate"),
        (("ca", "sign-user", str(lab.tmp / "nowhere"), line, "--principal", "dev", "--valid",
          "1h"), "no CA in"),
    ]
    for args, text in cases:
        done = tether(*args)
        assert done.returncode == 1, (args, done.stderr)
        assert text in one_line(done), args


def test_id_shows_the_installed_certificate_principals_and_expiry(lab: Lab) -> None:
    alice = lab.client("alice", ("dev", "ops"), valid="30d")
    done = tether("id", home=alice)
    der, _ = parse_id_line(ok(done).strip())
    info = ca_lib.cert_info(ca_lib.load_der(der))
    assert der == load_identity(alice).cert_der  # the line holds the presented certificate
    summary = done.stderr.decode()
    assert "principals: dev, ops" in summary
    assert f"valid until {ca_lib.stamp(info.not_after)}" in summary
    assert f"serial {info.serial:x}" in summary


def test_cert_install_refuses_a_certificate_for_another_key(lab: Lab) -> None:
    alice, bob = lab.client("alice"), lab.client("bob")
    line = lab.sign_user(bob, ("dev",))
    done = tether("cert", "install", line, home=alice)
    assert done.returncode == 1
    assert "for another key" in one_line(done)
    assert not (alice / "id_signed_cert.pem").exists()


def test_the_client_warns_when_its_certificate_expires_within_a_day(lab: Lab) -> None:
    server = lab.server("s", principals="dev\n")
    soon = lab.client("soon", ("dev",), valid="3h")
    later = lab.client("later", ("dev",), valid="30d")
    for home, warned in ((soon, True), (later, False)):
        done = lab.run(home, server, "echo", "x", opts=("--accept-new",))
        assert (done.returncode, done.stdout) == (0, b"x\n"), done.stderr
        assert (b"warning: your certificate expires in" in done.stderr) is warned, done.stderr
        shown = tether("put", "--home", str(home), "-p", str(server.port), str(lab.ca_cert),
                       f"127.0.0.1:{home.name}.pem")  # --home, not $TETHER_HOME
        assert shown.returncode == 0, shown.stderr
        assert (b"warning: your certificate expires" in shown.stderr) is warned


def test_trust_ca_writes_a_cert_authority_line(lab: Lab) -> None:
    alice = lab.client("alice")
    ok(tether("trust-ca", str(lab.ca_cert), "--hosts", "*.lab,10.0.0.*", home=alice))
    ok(tether("trust-ca", str(lab.ca_cert), "--hosts", "*.lab,10.0.0.*", home=alice))
    lines = (alice / "known_hosts").read_text().splitlines()
    assert len(lines) == 1
    marker, patterns, b64, _ = lines[0].split(" ", 3)
    assert (marker, patterns) == ("@cert-authority", "*.lab,10.0.0.*")
    assert base64.b64decode(b64) == ca_lib.der(
        x509.load_pem_x509_certificate(lab.ca_cert.read_bytes()))
    not_ca = tether("trust-ca", str(alice / "id_cert.pem"), "--hosts", "*", home=alice)
    assert not_ca.returncode == 1
    assert "not a CA certificate" in one_line(not_ca)


def test_revoke_by_serial_or_fingerprint_lists_it_in_the_signed_crl(lab: Lab) -> None:
    a, b = lab.client("a", ("dev",)), lab.client("b", ("dev",))
    serial_a = ca_lib.cert_info(ca_lib.load_der(load_identity(a).cert_der)).serial
    ok(tether("ca", "revoke", str(lab.ca_dir), f"{serial_a:x}"))
    ok(tether("ca", "revoke", str(lab.ca_dir), load_identity(b).fingerprint))
    pem = ok(tether("ca", "crl", str(lab.ca_dir)))
    crl = x509.load_pem_x509_crl(pem.encode())
    ca = x509.load_pem_x509_certificate(lab.ca_cert.read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    serial_b = ca_lib.cert_info(ca_lib.load_der(load_identity(b).cert_der)).serial
    assert {r.serial_number for r in crl} == {serial_a, serial_b}
    assert (lab.ca_dir / "crl.pem").read_text() == pem
