"""``tether run`` has two paths: the console script's synchronous fast path (cli/oneshot.py) and
the click/asyncio CLI (``TETHER_FULL_CLI=1`` forces it). Every case here runs both ways, against
the same real server, and must give the same bytes, the same stderr and the same status."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pexpect
import pytest

from support import TETHER
from tether.identity import known_hosts_path, lookup_known_host

if TYPE_CHECKING:
    from conftest import Client, ClientHomeFactory, ServerFactory

HOST = "127.0.0.1"
PATHS = {"fast": {}, "full": {"TETHER_FULL_CLI": "1"}}
# What the fast path must not load (the point of it); the click path loads asyncio and click.
HEAVY = ("asyncio", "click", "cryptography", "dataclasses", "typing")


def _run(client: Client, path: str, args: list[str], input: bytes | None = None,
         **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*TETHER, "run", *args], input=input, capture_output=True, timeout=60,
        env={**client.env(), **PATHS[path]}, start_new_session=True,
        stdin=None if input is not None else subprocess.DEVNULL, **kwargs,
    )


def both(client: Client, *args: str, input: bytes | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    """Run ``tether run ARGS`` both ways; assert identical results and return them."""
    fast, full = (_run(client, path, list(args), input) for path in PATHS)
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout,
                                                           full.stderr)
    return fast


def on(client: Client, *args: str) -> list[str]:
    """``-p PORT`` for the client's server, then ARGS."""
    return ["-p", str(client.port), *args]


@pytest.mark.parametrize("command, status", [
    (["true"], 0), (["exit 3"], 3), (["kill -9 $$"], 137), (["sh", "-c", "exit 42"], 42),
])
def test_status(client: Client, command: list[str], status: int) -> None:
    assert both(client, *on(client, HOST, "--", *command)).returncode == status


def test_stdout_and_stderr_apart(client: Client) -> None:
    done = both(client, *on(client, HOST, "--", "echo out; echo err >&2; echo more"))
    assert (done.stdout, done.stderr) == (b"out\nmore\n", b"err\n")


def test_stdin_and_binary_bytes(client: Client) -> None:
    payload = random.Random(7).randbytes(3 * 1024 * 1024 + 17)  # beyond one flow window
    done = both(client, *on(client, HOST, "--", "cat"), input=payload)
    assert done.returncode == 0 and done.stdout == payload


def test_no_stdin_cwd_env_and_no_double_dash(client: Client, server: Any) -> None:
    (server.root / "oneshot-dir").mkdir(exist_ok=True)
    done = both(client, *on(client, "-n", "--cwd", "oneshot-dir", "--env", "X=1",
                            "--env=Y=two", HOST, "sh", "-c", 'pwd; echo "$X$Y"; cat'),
                input=b"never read")
    assert done.stdout.decode().splitlines() == [str(server.root / "oneshot-dir"), "1two"]


def test_timeout(client: Client) -> None:
    done = both(client, *on(client, "--timeout", "0.5", HOST, "--", "sleep 30"))
    assert done.returncode == 124 and b"timed out after 0.5 s" in done.stderr


@pytest.mark.parametrize("args, status, words", [
    (["--", "no-such-program-xyz", "a"], 127, b"cannot start"),
    (["--", "no-such-program-xyz"], 127, b"not found"),
    (["--", " "], 1, b"empty command"),
])
def test_refused_commands(client: Client, args: list[str], status: int, words: bytes) -> None:
    done = both(client, *on(client, HOST, *args))
    assert done.returncode == status and words in done.stderr


def test_missing_cwd_and_unknown_encoding(client: Client) -> None:
    done = both(client, *on(client, "--cwd", "no/such/dir", HOST, "--", "true"))
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1
    done = both(client, *on(client, "--encoding", "no-such-codec", HOST, "--", "true"))
    assert done.returncode == 1 and b"unknown encoding" in done.stderr


def test_encoding_transcodes_into_a_pipe(client: Client) -> None:
    done = both(client, *on(client, "--encoding", "latin-1", HOST, "--", r"printf '\xe9'"))
    assert done.stdout == "é".encode()


def test_connection_refused_and_unknown_host(client: Client) -> None:
    done = both(client, "-p", "1", HOST, "--", "true")  # never reached, not "lost"
    assert done.returncode == 255
    assert done.stderr == b"tether: 127.0.0.1 port 1: connection refused\n"
    done = both(client, "host.invalid", "--", "true")
    assert done.returncode == 255 and done.stderr.count(b"\n") == 1
    assert done.stderr.startswith(b"tether: host.invalid port 7722: cannot resolve the name")


@pytest.mark.parametrize("host, hint", [
    ("buidl3", b""), ("buidl3:7788", b"try -p 7788 buidl3"),
])
def test_errors_name_the_host(client: Client, host: str, hint: bytes) -> None:
    done = both(client, host, "--", "true")
    assert done.returncode == 255 and done.stderr.count(b"\n") == 1
    assert done.stderr.startswith(f"tether: {host} port 7722: ".encode()), done.stderr
    assert hint in done.stderr


def test_options_between_host_and_command(client: Client) -> None:
    """ssh's rule: options after HOST are tether's until -- or the first other word."""
    done = both(client, HOST, "-p", str(client.port), "--env", "X=1", "-n",
                "sh", "-c", 'echo "$X" "$@"', "sh", "-p", "--env")
    assert (done.returncode, done.stdout) == (0, b"1 -p --env\n"), done.stderr
    done = both(client, HOST, "--port", str(client.port), "--timeout", "0.5", "--",
                "sleep 30")
    assert done.returncode == 124
    done = both(client, "-p", "1", HOST, "-p", str(client.port), "echo", "last -p wins")
    assert (done.returncode, done.stdout) == (0, b"last -p wins\n"), done.stderr


def test_unknown_option_after_host_is_a_usage_error(client: Client) -> None:
    done = both(client, HOST, "-p", str(client.port), "-la")
    assert done.returncode == 2 and b"No such option: -l" in done.stderr
    assert b"tether run HOST -- COMMAND" in done.stderr


def test_fleet_options_after_the_hosts(client: Client) -> None:
    """`tether run a,b --host-timeout 2 -- true`: the fleet's options after the hosts are
    tether's too (the summary's times differ between runs: stdout and status compared)."""
    for path in PATHS:
        done = _run(client, path, [f"{HOST},", "--host-timeout", "20", "-p", str(client.port),
                                   "--parallel", "2", "--", "echo", "hi"])
        assert (done.returncode, done.stdout) == (0, b"127.0.0.1 | hi\n"), done.stderr
        assert b"1 host: 1 ok, 0 failed" in done.stderr


@pytest.mark.parametrize("args", [["-p", "99999", HOST, "true"], [HOST, "-p", "0", "true"],
                                  ["--plaintext", "10.1.2.3", "true"],
                                  ["localhost.invalid", "--plaintext", "true"]])
def test_bad_port_and_remote_plaintext_are_usage_errors(client: Client, args: list[str]
                                                        ) -> None:
    done = both(client, *args)
    assert done.returncode == 2 and b"Traceback" not in done.stderr, done.stderr
    assert b"--port" in done.stderr or b"--plaintext is only for a server on this machine" \
        in done.stderr


def test_a_broken_inventory_does_not_stop_an_address(client: Client, tmp_path: Path) -> None:
    home = tmp_path / "broken"
    home.mkdir()
    for name in ("id_key.pem", "id_cert.pem", "id_cert.name", "known_hosts"):
        if (client.home / name).exists():
            (home / name).write_bytes((client.home / name).read_bytes())
    (home / "hosts.toml").write_text(f'[hosts.box]\naddress = "{HOST}"\nbroken = = 1\n')
    done = both(client.other(home=home), *on(client, HOST, "--", "echo fine"))
    assert (done.returncode, done.stdout) == (0, b"fine\n")
    assert done.stderr.count(b"\n") == 1 and b"warning: " in done.stderr
    assert b"hosts.toml" in done.stderr
    done = both(client.other(home=home), *on(client, "box", "--", "echo fine"))
    assert done.returncode == 1 and b"hosts.toml" in done.stderr  # a name needs it


def test_unknown_server_then_accept_new(client: Client,
                                        make_client_home: ClientHomeFactory) -> None:
    fresh = client.other(home=make_client_home("oneshot-unpinned", authorized=True))
    done = both(fresh, *on(fresh, HOST, "--", "true"))
    assert done.returncode == 255 and b"--accept-new" in done.stderr
    for path in PATHS:
        known_hosts_path(fresh.home).unlink(missing_ok=True)
        done = _run(fresh, path, on(fresh, "--accept-new", HOST, "--", "echo pinned"))
        assert (done.returncode, done.stdout) == (0, b"pinned\n"), done.stderr
        assert known_hosts_path(fresh.home).read_text() == \
            f"[{HOST}]:{fresh.port} {client.server.fingerprint}\n"


def test_changed_server_and_unauthorized_client(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory
) -> None:
    other = make_server(pinned=False)
    path = known_hosts_path(client.home)
    before = path.read_text()
    path.write_text(before + f"[{HOST}]:{other.port} {client.server.fingerprint}\n")
    try:
        done = both(client, *on(client.other(server=other), HOST, "--", "true"))
        assert done.returncode == 255 and b"HAS CHANGED" in done.stderr
    finally:
        path.write_text(before)
    stranger = client.other(home=make_client_home("oneshot-stranger"))
    done = both(stranger, *on(stranger, "--accept-new", HOST, "--", "true"))
    assert done.returncode == 255 and b"not authorized" in done.stderr


def test_plain_forms_load_nothing_heavy(client: Client) -> None:
    """The fast path really is taken (and TETHER_FULL_CLI really avoids it): what it imports."""
    code = ("import sys\n"
            "from tether.cli.oneshot import main\n"
            f"sys.argv = ['tether', 'run', '-p', '{client.port}', '{HOST}', '--', 'echo', 'x']\n"
            "main()\n")
    for path in PATHS:
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                              capture_output=True, timeout=60,
                              env={**client.env(), **PATHS[path]}, stdin=subprocess.DEVNULL)
        assert done.returncode == 0 and done.stdout == b"x\n", done.stderr
        imported = {line.rsplit(b"|", 1)[-1].strip().decode()
                    for line in done.stderr.splitlines() if line.startswith(b"import time:")}
        heavy = imported & set(HEAVY)
        assert heavy == set() if path == "fast" else {"asyncio", "click"} <= heavy, heavy


@pytest.mark.parametrize("args, status", [
    (["--help"], 0), ([], 2), (["--env", "NOEQUALS", HOST, "true"], 2),
    (["--port", "seven", HOST, "true"], 2), (["--bogus", HOST, "true"], 2),
])
def test_other_forms_are_the_click_cli(client: Client, args: list[str], status: int) -> None:
    done = both(client, *args)
    assert done.returncode == status
    assert (b"Usage:" in done.stdout) if status == 0 else (b"Usage:" in done.stderr)


def test_inventory_name_and_group(client: Client, tmp_path: Path) -> None:
    home = tmp_path / "inv"
    home.mkdir()
    for name in ("id_key.pem", "id_cert.pem", "id_cert.name", "known_hosts"):
        if (client.home / name).exists():
            (home / name).write_bytes((client.home / name).read_bytes())
    (home / "hosts.toml").write_text(
        f'[hosts.box]\naddress = "{HOST}"\nport = {client.port}\ngroups = ["g"]\n')
    named = client.other(home=home)
    done = both(named, "box", "--", "echo named")
    assert (done.returncode, done.stdout) == (0, b"named\n"), done.stderr
    for path in PATHS:  # the summary on stderr has durations: compare what else is there
        done = _run(named, path, ["@g", "--", "echo grouped"])
        assert (done.returncode, done.stdout) == (0, b"box | grouped\n"), done.stderr


@pytest.mark.parametrize("path", sorted(PATHS))
def test_first_connection_asks_on_the_terminal(
    client: Client, make_client_home: ClientHomeFactory, path: str
) -> None:
    fresh = client.other(home=make_client_home(f"oneshot-ask-{path}", authorized=True))
    argv = [*TETHER, "run", *on(fresh, HOST, "--", "echo trusted")]
    child = pexpect.spawn(argv[0], argv[1:], env={**fresh.env(), **PATHS[path]}, timeout=60,
                          use_poll=True)
    try:
        child.expect(r"Trust it and connect \(yes/no\)\? ")
        child.sendline("yes")
        child.expect("trusted")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert lookup_known_host(fresh.home, HOST, fresh.port) == client.server.fingerprint


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_reach_the_remote_command(client: Client, path: str, sig: int,
                                          status: int) -> None:
    name = signal.Signals(sig).name[3:]
    proc = subprocess.Popen(
        [*TETHER, "run", *on(client, HOST, "--",
                             f"trap 'echo got-{name}; exit {status}' {name}; echo ready; "
                             f"while :; do sleep 0.1; done")],
        env={**client.env(), **PATHS[path]}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (status, f"got-{name}\n".encode()), err


@pytest.mark.parametrize("args, expected", [
    (["h", "--", "ls", "-l"], ("h", 7722, ["ls", "-l"], None, True)),
    (["-p7000", "-n", "--timeout=2.5", "h", "x"], ("h", 7000, ["x"], 2.5, False)),
    (["--port", "7000", "--", "h", "--", "x"], ("h", 7000, ["x"], None, True)),
    (["--cwd", "-dir-", "h", "--", "-h"], ("h", 7722, ["-h"], None, True)),
    # tether's options between HOST and the command, as ssh reads them (issue 14, item 5)
    (["h", "-p", "7788", "true"], ("h", 7788, ["true"], None, True)),
    (["h", "-n", "--timeout", "3", "--", "ls", "-l"], ("h", 7722, ["ls", "-l"], 3.0, False)),
    (["-p", "7000", "h", "ls", "-p", "1"], ("h", 7000, ["ls", "-p", "1"], None, True)),
    (["h", "--", "--", "x"], ("h", 7722, ["--", "x"], None, True)),
])
def test_parse_plain_forms(args: list[str], expected: tuple[Any, ...]) -> None:
    from tether.cli.oneshot import parse

    opts = parse(args)
    assert opts is not None
    assert (opts.host, opts.port, opts.command, opts.timeout, opts.stdin) == expected


@pytest.mark.parametrize("args", [
    [], ["-h"], ["--help"], ["--json", "h", "x"], ["--parallel", "2", "h", "x"],
    ["--home=", "h", "x"], ["-p", "x7", "h", "x"], ["-nx", "h", "x"], ["--env", "NOEQ", "h", "x"],
    ["--timeout"], ["--accept-new=yes", "h", "x"],
    ["h", "-h"], ["a,b", "--host-timeout", "2", "--", "true"], ["h", "--json", "x"],
    ["h", "-x", "y"], ["h", "-p", "99999", "x"],
])
def test_parse_leaves_other_forms_to_click(args: list[str]) -> None:
    from tether.cli.oneshot import parse

    assert parse(args) is None
