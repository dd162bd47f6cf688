"""What a newcomer from ssh and scp expects (issue 14), through the real ``tether`` console
script and the public API: errors that name what went wrong (the host, the option, the
directory), Ctrl-C as one line and 130 with partials kept and the finished hosts reported,
``--json`` on failure, progress totals, inventory names in ``tether.connect``, fingerprints
beside names, and the README's ``connect_many`` example failing when its transfers fail.
(``run``'s two front doors are compared in test_oneshot.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tether
from support import LISTENING, TETHER, ServeProcess, await_line, stop_process, wait_until
from tether.errors import ConnectionBroken, ConnectionRefused, UsageError
from tether.identity import load_identity, short_fingerprint

if TYPE_CHECKING:
    from conftest import Client

HOST = "127.0.0.1"
PATHS = {"fast": {}, "full": {"TETHER_FULL_CLI": "1"}}
ID_FILES = ("id_key.pem", "id_cert.pem", "id_cert.name", "known_hosts")


def _cli(client: Client, *args: str, cwd: Path | None = None, **env: str
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*TETHER, *args], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**client.env(), **env}, cwd=cwd)


def _home_with(client: Client, path: Path, inventory: str) -> Path:
    """A copy of the client's identity and pins, with ``inventory`` as its hosts.toml."""
    path.mkdir()
    for name in ID_FILES:
        if (client.home / name).exists():
            (path / name).write_bytes((client.home / name).read_bytes())
    (path / "hosts.toml").write_text(inventory)
    return path


# --- item 7: which option wanted a number -------------------------------------------------------


@pytest.mark.parametrize("command", ["put", "get"])
def test_a_port_that_is_not_a_number_names_its_option(client: Client, command: str) -> None:
    args = ["-p", "report.txt", "h:/x"] if command == "put" else ["-p", "report.txt", "h:x", "."]
    done = _cli(client, command, *args)
    assert done.returncode == 2
    assert b"'-p' / '--port'" in done.stderr and b"report.txt" in done.stderr
    done = _cli(client, command, "-p", "99999", "h:/x", "y")
    assert done.returncode == 2 and b"99999 is not in the range" in done.stderr
    assert b"Traceback" not in done.stderr


# --- item 8: refused is its own error, and errors name the host --------------------------------


async def test_api_raises_connection_refused_naming_the_host(client: Client) -> None:
    with pytest.raises(ConnectionRefused) as refused:
        await tether.connect(HOST, 1, home=client.home)
    assert not isinstance(refused.value, ConnectionBroken)
    assert str(refused.value) == "127.0.0.1 port 1: connection refused"


async def test_api_plaintext_to_another_machine_is_a_usage_error(client: Client) -> None:
    with pytest.raises(UsageError, match="only for a server on this machine"):
        await tether.connect("10.1.2.3", 1, plaintext=True, home=client.home)


def test_put_and_get_name_the_host(client: Client, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for args in (["put", str(tmp_path / "f"), "buidl3.invalid:/tmp/"],
                 ["get", "-p", "1", f"{HOST}:f", str(tmp_path)]):
        done = _cli(client, *args)
        assert done.returncode == 255 and done.stderr.count(b"\n") == 1
        assert re.match(rb"tether: (buidl3\.invalid port 7722: cannot resolve the name"
                        rb"|127\.0\.0\.1 port 1: connection refused)", done.stderr)


# --- item 16: tether.connect resolves inventory names ------------------------------------------


async def test_api_connect_resolves_an_inventory_name(client: Client, tmp_path: Path) -> None:
    home = _home_with(client, tmp_path / "inv",
                      f'[hosts.build1]\naddress = "{HOST}"\nport = {client.port}\n')
    async with tether.connect("build1", home=home) as conn:
        assert (await conn.run("echo named")).stdout == b"named\n"
    with pytest.raises(ConnectionRefused, match=r"127\.0\.0\.1 port 1:"):  # a port given wins
        await tether.connect("build1", 1, home=home)


# --- item 9: a directory that cannot be entered; get -r into a file ----------------------------


@pytest.fixture
def unprivileged_server(tmp_path: Path) -> Iterator[ServeProcess]:
    """A plaintext server without CAP_DAC_OVERRIDE, so a directory's mode binds it as it binds
    any account (the tests run as root, which would enter any directory)."""
    root = tmp_path / "uroot"
    (root / "secret").mkdir(parents=True)
    os.chown(root / "secret", 65534, 65534)
    (root / "secret").chmod(0o700)
    log = tmp_path / "userver.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *TETHER, "serve",
             "--plaintext", "-p", "0", "--root", str(root)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True,
            env={**os.environ, "TETHER_HOME": str(tmp_path / "uhome")})
    match = await_line(proc, log, LISTENING)
    server = ServeProcess(proc, tmp_path / "uhome", root, log, int(match.group(1)), "")
    yield server
    server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop CAP_DAC_OVERRIDE")
@pytest.mark.parametrize("path", PATHS)
def test_cwd_that_cannot_be_entered_names_it(client: Client, unprivileged_server: ServeProcess,
                                             path: str) -> None:
    done = _cli(client, "run", "--plaintext", "-p", str(unprivileged_server.port), HOST,
                "--cwd", "secret", "--", "ls", **PATHS[path])
    assert done.returncode == 1, done.stderr
    assert done.stderr == (b"tether: cannot enter the working directory secret: permission "
                           b"denied for the server's account\n")


def test_get_tree_into_an_existing_file(client: Client, tmp_path: Path) -> None:
    (client.server.root / "newcomer-tree").mkdir(exist_ok=True)
    (client.server.root / "newcomer-tree" / "a").write_text("a")
    existing = tmp_path / "existing-file"
    existing.write_text("mine")
    done = _cli(client, "get", "-p", str(client.port), "-r", f"{HOST}:newcomer-tree",
                str(existing))
    assert done.returncode == 1
    assert done.stderr.count(b"\n") == 1 and b"exists and is not a directory" in done.stderr
    assert existing.read_text() == "mine"


# --- item 15: --json on failure, progress totals -----------------------------------------------


@pytest.mark.parametrize("command", ["put", "get"])
def test_json_is_printed_when_a_transfer_fails(client: Client, tmp_path: Path,
                                               command: str) -> None:
    (tmp_path / "here.txt").write_text("x")
    (client.server.root / "newcomer-exists.txt").write_text("there")
    args = ([str(tmp_path / "here.txt"), f"{HOST}:newcomer-exists.txt"] if command == "put"
            else [f"{HOST}:no-such-file-here", str(tmp_path)])
    done = _cli(client, command, "--json", "-p", str(client.port), *args)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["files"] == 0
    assert report["error"] and report["error"].encode() in done.stderr
    assert done.stderr.count(b"\n") == 1


def test_refused_tree_put_leaves_no_directories(client: Client, tmp_path: Path) -> None:
    """A put -r into an existing tree that meets an existing file is refused before anything is
    written: the new directories the tree holds are not made, the existing file is untouched."""
    tree = tmp_path / "rtree"
    (tree / "a" / "new-dir" / "deeper").mkdir(parents=True)
    (tree / "a" / "new-dir" / "deeper" / "f").write_text("f")
    (tree / "a" / "taken.txt").write_text("mine")
    there = client.server.root / "refused-put"
    (there / "rtree" / "a").mkdir(parents=True, exist_ok=True)
    (there / "rtree" / "a" / "taken.txt").write_text("theirs")
    done = _cli(client, "put", "-p", str(client.port), "-r", str(tree), f"{HOST}:refused-put")
    assert done.returncode == 1
    assert done.stderr.count(b"\n") == 1
    assert b"rtree/a/taken.txt exists" in done.stderr and b"nothing was written" in done.stderr
    assert not (there / "rtree" / "a" / "new-dir").exists()
    assert (there / "rtree" / "a" / "taken.txt").read_text() == "theirs"
    forced = _cli(client, "put", "-p", str(client.port), "-r", "--force", str(tree),
                  f"{HOST}:refused-put")
    assert forced.returncode == 0, forced.stderr
    assert (there / "rtree" / "a" / "new-dir" / "deeper" / "f").read_text() == "f"
    assert (there / "rtree" / "a" / "taken.txt").read_text() == "mine"


def test_json_files_is_a_count_and_entries_the_list(client: Client, tmp_path: Path) -> None:
    tree = tmp_path / "jtree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "one").write_text("1")
    (tree / "two").write_text("2")
    done = _cli(client, "put", "--json", "--force", "-r", "-p", str(client.port), str(tree),
                f"{HOST}:")
    report = json.loads(done.stdout)
    assert (done.returncode, report["ok"], report["files"]) == (0, True, 2), done.stderr
    assert sorted(e["kind"] for e in report["entries"]) == ["dir", "dir", "file", "file"]


def test_progress_shows_totals(client: Client, tmp_path: Path) -> None:
    tree = tmp_path / "ptree"
    tree.mkdir()
    for i in range(5):
        (tree / f"f{i}").write_bytes(b"x" * 300_000)
    done = _cli(client, "put", "--progress", "--force", "-r", "-p", str(client.port),
                str(tree), f"{HOST}:", COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert b"total (5 files)" in done.stderr and b"1.5/1.5 MB" in done.stderr, done.stderr
    (client.server.root / "newcomer-one").write_bytes(b"y" * 2_000_000)
    done = _cli(client, "get", "--progress", "--force", "-p", str(client.port),
                f"{HOST}:newcomer-one", str(tmp_path), COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert b"total (1 file)" in done.stderr and b"2.0/2.0 MB" in done.stderr, done.stderr
    assert b"/?" not in done.stderr


# --- item 6: Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_during_a_get_keeps_the_partial(client: Client, tmp_path: Path) -> None:
    big = client.server.root / "newcomer-big"
    with big.open("wb") as fh:
        fh.truncate(8 << 30)  # sparse: it never finishes before the interrupt
    try:
        proc = subprocess.Popen([*TETHER, "get", "-p", str(client.port), f"{HOST}:newcomer-big",
                                 str(tmp_path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=client.env(), start_new_session=True)
        part = tmp_path / ".newcomer-big.tether-part"
        try:
            assert wait_until(lambda: part.exists() and part.stat().st_size > 0, 30)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
        assert proc.returncode == 130
        assert err == (b"tether: interrupted: partial files are kept; run the same command "
                       b"again to resume\n")
        assert part.exists() and not (tmp_path / "newcomer-big").exists()
    finally:
        big.unlink()


def test_ctrl_c_during_a_fan_out_reports_the_finished_hosts(client: Client,
                                                           tmp_path: Path) -> None:
    home = _home_with(client, tmp_path / "fleet",
                      f'[hosts.quick]\naddress = "{HOST}"\nport = {client.port}\n'
                      f'[hosts.slow]\naddress = "{HOST}"\nport = {client.port}\n')
    lock = f"newcomer-lock-{os.getpid()}-{time.monotonic_ns()}"
    out = tmp_path / "out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*TETHER, "run", "quick,slow", "--group-output", "--",
             f"mkdir {lock} 2>/dev/null && exit 0; sleep 60"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE,
            env={**client.env(), "TETHER_HOME": str(home)}, start_new_session=True)
    try:
        assert wait_until(lambda: b"=== " in out.read_bytes(), 30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
        (client.server.root / lock).rmdir()
    first = re.search(rb"=== (quick|slow): ok", out.read_bytes())
    assert first is not None
    done, other = first.group(1).decode(), ({"quick", "slow"} - {first.group(1).decode()}).pop()
    assert proc.returncode == 130
    text = err.decode()
    assert re.search(rf"^{done}\s+ok\s", text, re.M), text
    assert text.endswith(f"tether: interrupted: 1 of 2 hosts finished; not finished: "
                         f"{other}\n"), text
    assert "Traceback" not in text and "Aborted" not in text


# --- item 4: identities with the same name told apart ------------------------------------------


def test_log_lines_show_the_short_fingerprint(client: Client) -> None:
    assert client.run("true").returncode == 0
    fp = short_fingerprint(load_identity(client.home).fingerprint)
    assert wait_until(lambda: f"exec e2e-client {fp} stream" in client.server.log_text(), 10)


def _home_cli(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One ``tether`` command with ``home`` as its TETHER_HOME (no conftest import: which
    ``conftest`` module that name means depends on the run's order)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", TETHER_HOME=str(home))
    return subprocess.run([*TETHER, *args], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


def test_authorize_says_when_a_name_is_taken(tmp_path: Path) -> None:
    for home in ("a", "b"):
        made = _home_cli(tmp_path / home, "keygen", "--name", "ci@build")
        assert made.returncode == 0, made.stderr
    first, second = load_identity(tmp_path / "a"), load_identity(tmp_path / "b")

    def tether_cli(*args: str, home: Path) -> subprocess.CompletedProcess[bytes]:
        return _home_cli(home, *args)

    server = tmp_path / "server"
    lines = [tether_cli("id", home=tmp_path / d).stdout.decode().strip() for d in ("a", "b")]
    done = tether_cli("authorize", lines[0], home=server)
    assert done.returncode == 0 and b"note: another" not in done.stderr
    done = tether_cli("authorize", lines[1], home=server)
    assert done.returncode == 0
    assert (f"note: another authorized client is also named ci@build "
            f"({short_fingerprint(first.fingerprint)})").encode() in done.stderr
    assert second.fingerprint.encode() in done.stdout


# --- item 17: the README's connect_many example -------------------------------------------------


def test_readme_connect_many_example_fails_when_its_transfers_fail(client: Client,
                                                                   tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### `tether.connect_many`"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    home = _home_with(client, tmp_path / "readme",
                      f'[hosts.web1]\naddress = "{HOST}"\nport = {client.port}\n'
                      f'groups = ["web"]\n')
    work = tmp_path / "work"
    work.mkdir()  # no app.conf here, and the server has no /var/log/app.log
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          cwd=work, env={**client.env(), "TETHER_HOME": str(home)})
    assert done.returncode == 1, done.stderr
    assert b"put failed on web1" in done.stderr and b"get failed on web1" in done.stderr
    assert b"web1 ok 0" in done.stdout  # the run itself succeeded
    assert not (work / "logs").exists()  # no empty logs/web1/
