"""``tether ca ...`` (a fleet's certificate authority), ``tether cert install`` and ``tether
trust-ca``: the commands of fleet trust. The work is in :mod:`tether.ca`; this module parses,
asks for a passphrase, writes the files of a home and prints.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import click

from tether.cli.options import HOME, click_options

home_option = click_options([HOME])

PASSPHRASE_ENV = "TETHER_CA_PASSPHRASE"


def _names(values: tuple[str, ...]) -> list[str]:
    """``--principal a --principal b`` and ``--principal a,b`` alike."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _passphrase(directory: Path, new: bool = False) -> bytes | None:
    """The CA key's passphrase: $TETHER_CA_PASSPHRASE, else asked on the terminal (only when
    the key is encrypted, or for ``init --passphrase``)."""
    from tether.ca import key_is_encrypted

    if not new and not key_is_encrypted(directory):
        return None
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    text = click.prompt("CA key passphrase", hide_input=True, confirmation_prompt=new,
                        err=True)
    return str(text).encode()


@click.group()
def ca() -> None:
    """A certificate authority for a fleet: sign user and host certificates, revoke them."""


@ca.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="tether CA", show_default=True, help="The CA's name.")
@click.option("--passphrase", is_flag=True,
              help=f"Encrypt the CA key with a passphrase (asked, or ${PASSPHRASE_ENV}).")
def ca_init(directory: Path, name: str, passphrase: bool) -> None:
    """Create a CA key (mode 0600) and its self-signed CA certificate in DIRECTORY."""
    from tether.ca import ca_files, init_ca
    from tether.ca import der as der_of
    from tether.home import fingerprint

    cert = init_ca(directory, name, _passphrase(directory, new=True) if passphrase else None)
    click.echo(f"CA created: {ca_files(directory)[1]} ({fingerprint(der_of(cert))})")
    click.echo(f"servers: tether serve --trust-ca {ca_files(directory)[1]}")
    click.echo(f"clients: tether trust-ca {ca_files(directory)[1]} --hosts 'PATTERN'")


def _id_line(cert_der: bytes, name: str) -> str:
    from tether.identity import ID_PREFIX

    return f"{ID_PREFIX} {base64.b64encode(cert_der).decode()} {name}"


@ca.command("sign-user")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("id_line")
@click.option("--principal", "principals", multiple=True, required=True,
              help="A principal (repeatable, or comma-separated): what servers map to accounts.")
@click.option("--valid", required=True, help="How long the certificate is valid: 8h, 30d, ...")
@click.option("--allow", help="Narrow the certificate to these permissions (exec,shell,put,get).")
def sign_user(directory: Path, id_line: str, principals: tuple[str, ...], valid: str,
              allow: str | None) -> None:
    """Print an identity line holding a user certificate for ID_LINE's key (`tether id`)."""
    from tether.ca import der, parse_duration, sign
    from tether.identity import parse_id_line, parse_permissions

    cert_der, name = parse_id_line(id_line)
    cert = sign(directory, cert_der, "user", _names(principals), parse_duration(valid),
                parse_permissions(allow) if allow else None, _passphrase(directory))
    click.echo(_id_line(der(cert), name))


@ca.command("sign-host")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("id_line")
@click.option("--name", "names", multiple=True, required=True,
              help="A host name or address clients reach it by (repeatable, or a,b).")
@click.option("--valid", required=True, help="How long the certificate is valid: 8h, 90d, ...")
def sign_host(directory: Path, id_line: str, names: tuple[str, ...], valid: str) -> None:
    """Print an identity line holding a host certificate for the server key of ID_LINE (the
    line `tether id --server` prints on the server)."""
    from tether.ca import der, parse_duration, sign
    from tether.identity import parse_id_line

    cert_der, name = parse_id_line(id_line)
    cert = sign(directory, cert_der, "host", _names(names), parse_duration(valid), None,
                _passphrase(directory))
    click.echo(_id_line(der(cert), name))


@ca.command("revoke")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("what", metavar="SERIAL|FINGERPRINT")
def revoke(directory: Path, what: str) -> None:
    """Revoke a certificate this CA signed, and rewrite DIRECTORY/crl.pem (copy it to the
    servers' --crl file, and to clients with `tether trust-ca --crl` for host certificates)."""
    from tether.ca import make_crl, serial_of
    from tether.ca import revoke as revoke_serial

    serial = serial_of(directory, what)
    state = "revoked" if revoke_serial(directory, serial) else "already revoked"
    make_crl(directory, passphrase=_passphrase(directory))
    click.echo(f"{state}: serial {serial:x}; revocation list: {directory / 'crl.pem'}")


@ca.command("crl")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--valid", default="30d", show_default=True, help="Until the list's next update.")
def crl(directory: Path, valid: str) -> None:
    """Print the CA's signed revocation list (PEM), also written to DIRECTORY/crl.pem."""
    from tether.ca import make_crl, parse_duration

    pem = make_crl(directory, parse_duration(valid), _passphrase(directory))
    click.echo(pem.decode(), nl=False)


@click.group()
def cert() -> None:
    """Install a certificate a CA signed for this identity's key."""


@cert.command("install")
@home_option
@click.argument("id_line")
@click.option("--server", is_flag=True, help="A host certificate for this server's key.")
def install(home: str | None, id_line: str, server: bool) -> None:
    """Keep the signed certificate of ID_LINE beside the key: a client presents it from now
    on; a server presents it to clients that trust its CA (the next connection)."""
    from tether.ca import cert_info, load_der, pem, stamp
    from tether.errors import IdentityError
    from tether.home import signed_cert_file
    from tether.hosttrust import expiry_file
    from tether.identity import home_dir, load_identity, parse_id_line

    kind = "server" if server else "client"
    h = home_dir(home)
    cert_der, _ = parse_id_line(id_line)
    cert = load_der(cert_der)
    info = cert_info(cert)
    own = load_der(load_identity(h, kind).cert_der)
    if cert.public_key() != own.public_key():
        raise IdentityError(f"that certificate is for another key than this {kind}'s")
    if info.self_signed or info.is_ca:
        raise IdentityError("that line holds no CA-signed certificate")
    if server != (not info.principals):
        raise IdentityError("a host certificate goes to --server, a user certificate to a "
                            "client" if server else "that is a host certificate: use --server")
    path = Path(signed_cert_file(h, kind))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem(cert))
    os.replace(tmp, path)
    if not server:
        Path(expiry_file(h)).write_text(f"{int(info.not_after.timestamp())}\n")
    what = ("names " + ", ".join(info.names)) if server else (
        "principals " + ", ".join(info.principals))
    click.echo(f"installed {path}: serial {info.serial:x}, {what}, "
               f"valid until {stamp(info.not_after)}")


@click.command("trust-ca")
@home_option
@click.argument("ca_cert", type=click.Path(exists=True, path_type=Path))
@click.option("--hosts", "patterns", help="Trust its host certificates for host names "
              "matching PATTERN (fnmatch, comma-separated: '*.lab,10.0.0.*').")
@click.option("--crl", "crl_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Install this CA's revocation list for host certificates.")
def trust_ca(home: str | None, ca_cert: Path, patterns: str | None,
             crl_path: Path | None) -> None:
    """Trust host certificates signed by CA_CERT (like @cert-authority in ssh's known_hosts):
    a new host of the fleet needs no prompt and no --accept-new."""
    from tether.ca import der, load_ca_cert, load_crls
    from tether.errors import IdentityError
    from tether.home import fingerprint
    from tether.hosttrust import CA_MARKER, ca_lines, crl_file
    from tether.identity import home_dir, known_hosts_path

    if not patterns and crl_path is None:
        raise click.UsageError("give --hosts PATTERN (and/or --crl FILE)")
    h = home_dir(home)
    ca_obj = load_ca_cert(ca_cert)
    ca_der = der(ca_obj)
    if patterns:
        if any(c.isspace() for c in patterns):
            raise click.UsageError("PATTERN may not contain spaces")
        h.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = ca_obj.subject.rfc4514_string().replace(" ", "_")
        if (patterns, ca_der) not in [(p, d) for p, d, _ in ca_lines(h)]:
            with open(known_hosts_path(h), "a") as fh:
                fh.write(f"{CA_MARKER} {patterns} {base64.b64encode(ca_der).decode()} {name}\n")
        click.echo(f"trusting host certificates from {fingerprint(ca_der)} for {patterns}")
    if crl_path is not None:
        data = crl_path.read_bytes()
        try:
            crls = load_crls(data)
        except ValueError as exc:
            raise IdentityError(f"{crl_path}: not a revocation list ({exc})") from exc
        for item in crls:
            if item.issuer != ca_obj.subject or not item.is_signature_valid(
                    ca_obj.public_key()):  # type: ignore[arg-type]
                raise IdentityError(f"{crl_path}: not signed by that CA")
        target = Path(crl_file(h, ca_der))
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        click.echo(f"installed the revocation list for {fingerprint(ca_der)}: {target}")
