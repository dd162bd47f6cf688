"""``tether serve``'s configuration file: every option as a key, flags beating the file, and
errors naming the file, the line and the key (exit status 1, one line, nothing started)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tether
from tether.ca import init_ca, make_crl
from tether.cli.serve import serve
from tether.cli.serve_config import settings
from tether.errors import RemoteError

if TYPE_CHECKING:
    from conftest import Client, ServerFactory

Cli = Callable[..., subprocess.CompletedProcess[bytes]]

# A value for every key, none of them the default; the test fails when an option is added to
# `tether serve` without a line here (so the file format is never behind the flags).
def every_key(tmp: Path) -> dict[str, str]:
    (tmp / "root").mkdir(exist_ok=True)
    ca = tmp / "ca"
    if not (ca / "ca_cert.pem").exists():
        init_ca(ca, "config test CA")
        make_crl(ca)
    return {
        "home": f'"{tmp / "h"}"',
        "host": '"127.0.0.2"',
        "port": "7790",
        "root": f'"{tmp / "root"}"',
        "name": '"from-file"',
        "encoding": '"latin-1"',
        "plaintext": "true",
        "kill-grace": "0.25",
        "classic-port": "7791",
        "classic-host": '"127.0.0.3"',
        "i-understand-classic-is-unauthenticated": "true",
        "audit": f'"{tmp / "audit.log"}"',
        "discoverable": "true",
        "drain": "3.5",
        "log-format": '"json"',
        "metrics": '"127.0.0.1:9799"',
        "key-overlap": "3600",
        "trust-ca": f'["{ca / "ca_cert.pem"}"]',
        "crl": f'"{ca / "crl.pem"}"',
        "max-connections": "11",
        "max-connections-per-client": "12",
        "max-processes-per-client": "13",
        "max-streams-per-connection": "14",
        "max-pending-per-address": "15",
        "max-failures-per-address": "16",
        "handshake-timeout": "17.5",
        "frame-timeout": "18.5",
        "idle-timeout": "19.5",
        "keepalive": "20.5",
        "max-upload": "21",
        "process-nproc": "22",
        "process-memory": "23000000",
        "reserved-descriptors": "24",
        "max-descriptors-per-client": "25",
        "max-batches-per-connection": "26",
        "max-fetches-per-client": "27",
        "stall-timeout": "28.5",
        "disk-threads": "29",
        "disk-threads-per-client": "30",
        "refusal-log-interval": "31.5",
        "pass-env": '["TERM", "http_proxy"]',
    }


def _check(cli: Cli, home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return cli("serve", "--check-config", *args, home=home)


def test_every_option_has_a_key_and_the_file_sets_it(cli: Cli, tmp_path: Path) -> None:
    values = every_key(tmp_path)
    assert set(values) == set(settings(serve)), "an option without a key here (or vice versa)"
    config = tmp_path / "serve.toml"
    config.write_text("# all of them\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    done = cli("serve", "--check-config", "--config", str(config))  # no TETHER_HOME
    assert done.returncode == 0, done.stderr
    shown = dict(_effective(done.stdout.decode()))
    for number, key in enumerate(values, 2):
        value, origin = shown[key]
        assert origin == f"{config}:{number}", key
        assert value == values[key].replace("3600", "3600.0").replace("0.25", "0.25"), key


def _effective(text: str) -> list[tuple[str, tuple[str, str]]]:
    """(key, (value, origin)) for each `key = value  # origin` line of --check-config."""
    found = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        setting, _, origin = line.partition("  # ")
        key, _, value = setting.partition(" = ")
        found.append((key, (value, origin)))
    return found


def test_the_printed_configuration_is_a_valid_file(cli: Cli, tmp_path: Path) -> None:
    first = _check(cli, tmp_path / "h")
    assert first.returncode == 0, first.stderr
    again = tmp_path / "again.toml"
    again.write_bytes(first.stdout)
    second = _check(cli, tmp_path / "h", "--config", str(again))
    assert second.returncode == 0, second.stderr
    assert [k for k, _ in _effective(second.stdout.decode())] == \
        [k for k, _ in _effective(first.stdout.decode())]


def test_flag_beats_file_beats_default(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "serve.toml").write_text('name = "file"\nmax-connections = 5\n')  # found by default
    done = _check(cli, home, "--name", "flag")
    assert done.returncode == 0, done.stderr
    shown = dict(_effective(done.stdout.decode()))
    assert shown["name"] == ('"flag"', "command line")
    assert shown["max-connections"] == ("5", f"{home / 'serve.toml'}:2")
    assert shown["max-upload"] == ("0", "default")


@pytest.mark.parametrize("text, line, message", [
    ("port = 7\nbogus = 1\n", 2, "key 'bogus': unknown key"),
    ("\n\nmax-connections = \"many\"\n", 3, "key 'max-connections': expected an integer"),
    ("drain = true\n", 1, "key 'drain': expected a number"),
    ("plaintext = 1\n", 1, "key 'plaintext': expected true or false"),
    ("name = 'x'\nlog-format = \"xml\"\n", 2, "key 'log-format': 'xml' is not one of"),
    ("root = \"/no/such/dir\"\n", 1, "key 'root': Directory '/no/such/dir' does not exist"),
    ("[limits]\nmax-connections = 1\n", 1, "key 'limits': unknown key"),
    ("port = \n", 1, "Invalid value (at line 1, column 8)"),
    ("name = \"" + "x" * 65 + "\"\n", 1, "key 'name': "),  # the option's own check
    ("trust-ca = \"/ca.pem\"\n", 1, "key 'trust-ca': expected an array (a string each)"),
    ("\npass-env = [\"A=B\"]\n", 2, "key 'pass-env': wants a variable name, not 'A=B'"),
    ("trust-ca = [\"/no/such/ca.pem\"]\n", 1, "key 'trust-ca': File '/no/such/ca.pem' does "
                                              "not exist"),
])
def test_errors_name_the_key_and_line(cli: Cli, tmp_path: Path, text: str, line: int,
                                      message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    for args in (["--check-config"], ["-p", "0"]):  # the check, and a real start: same error
        done = cli("serve", "--config", str(config), *args, home=tmp_path / "h", timeout=30)
        assert done.returncode == 1
        err = done.stderr.decode()
        assert err.count("\n") == 1 and err.startswith(f"tether: {config}"), err
        assert message in err
        if "at line" not in message:
            assert f"{config}:{line}: " in err
    assert not (tmp_path / "h" / "server_key.pem").exists(), "a bad configuration started"


def test_unknown_table_key_and_missing_file(cli: Cli, tmp_path: Path) -> None:
    done = cli("serve", "--config", str(tmp_path / "none.toml"), "--check-config",
               home=tmp_path / "h")
    assert done.returncode == 1
    assert b"cannot read configuration file" in done.stderr
    assert b"No such file" in done.stderr


def test_options_that_do_not_fit_together_are_configuration_errors(cli: Cli,
                                                                   tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('host = "0.0.0.0"\nplaintext = true\n')
    done = cli("serve", "--config", str(config), "--check-config", home=tmp_path / "h")
    assert done.returncode == 1
    assert b"--plaintext is only allowed on a loopback address" in done.stderr
    config.write_text('metrics = "somewhere"\n')
    done = cli("serve", "--config", str(config), "--check-config", home=tmp_path / "h")
    assert done.returncode == 1
    assert b"expected ADDR:PORT" in done.stderr


async def test_a_server_runs_with_the_file(client: Client, make_server: ServerFactory,
                                           tmp_path: Path) -> None:
    """The file's settings are the running server's: its name, and a limit that bites."""
    home = tmp_path / "configured"
    home.mkdir()
    (home / "serve.toml").write_text('name = "from-the-file"\nmax-processes-per-client = 1\n'
                                     'port = 1\n')  # -p 0 on the command line wins
    server = make_server(home=home)
    async with tether.connect("127.0.0.1", server.port, home=client.home) as conn:
        assert conn.server.name == "from-the-file"
        first = await conn.start("sleep 30")
        with pytest.raises(RemoteError, match="too many processes"):
            await conn.run("true")
        await first.signal("KILL")
        assert (await first.wait()).signal == 9


def test_printed_strings_with_quotes_and_backslashes_read_back_the_same(
    cli: Cli, tmp_path: Path
) -> None:
    """--check-config's output is TOML a server can start from, whatever a string holds."""
    tricky = 'a "quoted" dir\\with a\nnew line\x7f'
    config = tmp_path / "tricky.toml"
    config.write_text(f"audit = {json.dumps(tricky)}\nname = \"it's\"\n")
    first = cli("serve", "--config", str(config), "--check-config", home=tmp_path / "h")
    assert first.returncode == 0, first.stderr
    again = tmp_path / "again.toml"
    again.write_bytes(first.stdout)
    table = tomllib.loads(again.read_text())
    assert (table["audit"], table["name"]) == (tricky, "it's")
    second = cli("serve", "--config", str(again), "--check-config", home=tmp_path / "h")
    assert second.returncode == 0, second.stderr
    values = {k: v for k, (v, _) in _effective(second.stdout.decode())}
    assert values == {k: v for k, (v, _) in _effective(first.stdout.decode())}
