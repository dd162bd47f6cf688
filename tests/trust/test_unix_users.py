"""Sessions mapped to Unix accounts (root only): ``build@host`` runs as build, in a worker that
dropped root's rights for good; its files are build's; a file only root can read stays unread;
a server that is not root refuses to map; limits hold per account."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support import TETHER, stop_process, wait_until

from .accounts import accounts_fixture, needs_root, serve_as, system_venv
from .lab import Lab, audit_events, env_for, ok, one_line, refused_in_audit, tether

pytestmark = needs_root


@pytest.fixture
def accounts() -> Iterator[list[pwd.struct_passwd]]:
    yield from accounts_fixture(2)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="tether-accounts-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _owned_by(uid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is not None and uids.real == uid:
            found.append(proc)
    return found


def test_build_at_host_runs_as_build_with_its_login_environment(
        lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    host = f"{build.pw_name}@127.0.0.1"
    done = lab.run(alice, server, "id -un; id -u; id -G; pwd; "
                   'echo "$HOME|$USER|$LOGNAME|$SHELL|$PATH"', host=host,
                   opts=("--accept-new",))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == build.pw_name
    assert lines[1] == str(build.pw_uid)
    assert "0" not in lines[2].split()  # no group of root's
    assert lines[3] == build.pw_dir  # the account's home is the default root
    assert lines[4] == (f"{build.pw_dir}|{build.pw_name}|{build.pw_name}|/bin/bash|"
                        "/usr/local/bin:/usr/bin:/bin")
    connection = [e for e in audit_events(server.home / "audit.log")
                  if e["event"] == "connection"][-1]
    assert connection["user"] == build.pw_name
    assert connection["principals"] == ["dev"]
    assert wait_until(lambda: not _owned_by(build.pw_uid), timeout=10), "a worker lingers"


def test_put_files_are_builds_and_a_root_only_file_stays_unread(
        lab: Lab, accounts: list[pwd.struct_passwd], open_dir: Path) -> None:
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    host = f"{build.pw_name}@127.0.0.1"
    source = open_dir / "payload.bin"
    source.write_bytes(os.urandom(300_000))
    put = tether("put", "-p", str(server.port), "--accept-new", str(source),
                 f"{host}:payload.bin", home=alice)
    assert put.returncode == 0, put.stderr
    landed = Path(build.pw_dir) / "payload.bin"
    assert landed.read_bytes() == source.read_bytes()
    st = landed.stat()
    assert (st.st_uid, st.st_gid) == (build.pw_uid, build.pw_gid)

    secret = open_dir / "root-only"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    cat = lab.run(alice, server, "cat", str(secret), host=host)
    assert cat.returncode != 0
    assert b"Permission denied" in cat.stderr
    assert cat.stdout == b""
    got = tether("get", "-p", str(server.port), f"{host}:{secret}", str(open_dir / "stolen"),
                 home=alice)
    assert got.returncode == 1
    assert "permission denied" in one_line(got).lower()
    assert not (open_dir / "stolen").exists()
    listing = lab.run(alice, server, "ls", "/root", host=host)
    assert listing.returncode != 0


def test_a_put_tree_is_builds_throughout(lab: Lab, accounts: list[pwd.struct_passwd],
                                          open_dir: Path) -> None:
    """A recursive put (small files go in batches) makes directories and files as build."""
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    tree = open_dir / "tree"
    for rel in ("a/b/one.txt", "a/two.txt", "three.bin"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(rel.encode() * 100)
    put = tether("put", "-r", "-p", str(server.port), "--accept-new", str(tree),
                 f"{build.pw_name}@127.0.0.1:dest", home=alice)
    assert put.returncode == 0, put.stderr
    dest = Path(build.pw_dir) / "dest"
    made = [dest, *dest.rglob("*")]
    assert sorted(p.relative_to(dest).as_posix() for p in made if p.is_file()) == [
        "a/b/one.txt", "a/two.txt", "three.bin"]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(build.pw_uid, build.pw_gid)}
    assert (dest / "a/b/one.txt").read_bytes() == b"a/b/one.txt" * 100
    outside = tether("put", "-p", str(server.port), str(tree / "three.bin"),
                     f"{build.pw_name}@127.0.0.1:/etc/tether-planted", home=alice)
    assert outside.returncode == 1
    assert "permission denied" in one_line(outside).lower()  # root could have written it
    assert not Path("/etc/tether-planted").exists()


def test_a_shell_runs_as_the_account(lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    done = subprocess.run(
        [*TETHER, "shell", "-T", "-p", str(server.port), "--accept-new",
         f"{build.pw_name}@127.0.0.1"], input=b"whoami\ncd /tmp && pwd\necho $HOME\n",
        capture_output=True, timeout=60, env=env_for(alice), start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [build.pw_name, "/tmp", build.pw_dir]


def test_authorize_user_maps_an_authorized_client(
        lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    build, other = accounts
    server = lab.server("s", trust=False)
    plain = lab.client("plain")
    ok(tether("authorize", ok(tether("id", home=plain)).strip(), "--user", build.pw_name,
              home=server.home))
    default = lab.run(plain, server, "id", "-un", opts=("--accept-new",))
    assert (default.returncode, default.stdout) == (0, f"{build.pw_name}\n".encode())
    named = lab.run(plain, server, "id", "-un", host=f"{build.pw_name}@127.0.0.1")
    assert (named.returncode, named.stdout) == (0, f"{build.pw_name}\n".encode())
    refused = lab.run(plain, server, "id", "-un", host=f"{other.pw_name}@127.0.0.1")
    assert refused.returncode == 255
    assert f"may not use the account '{other.pw_name}'" in one_line(refused)
    assert refused_in_audit(server, f"may not use the account '{other.pw_name}'")


def test_the_api_reports_the_account(lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    import asyncio

    import tether as tether_api

    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))

    async def main() -> tuple[str, bytes]:
        async with tether_api.connect(f"{build.pw_name}@127.0.0.1", server.port, home=alice,
                                      accept_new=True) as conn:
            return conn.server.user, (await conn.run(["id", "-un"])).stdout

    assert asyncio.run(main()) == (build.pw_name, f"{build.pw_name}\n".encode())


def test_a_server_not_running_as_root_refuses_to_map_another_account(
        lab: Lab, accounts: list[pwd.struct_passwd], open_dir: Path) -> None:
    runner, build = accounts
    python = system_venv(open_dir / "venv")
    home, root = open_dir / "server-home", open_dir / "server-root"
    home.mkdir()
    shutil.copy(lab.ca_cert, home / "ca.pem")
    (home / "principals").write_text(f"dev user={build.pw_name},{runner.pw_name}\n")
    for path in (home, *home.iterdir()):
        os.chown(path, runner.pw_uid, runner.pw_gid)
    server = serve_as(runner, python, home, root, open_dir / "serve.log",
                      "--trust-ca", str(home / "ca.pem"))
    try:
        alice = lab.client("alice", ("dev",))
        refused = lab.run(alice, server, "id", "-un", host=f"{build.pw_name}@127.0.0.1",
                          opts=("--accept-new",))
        assert refused.returncode == 255
        assert (f"this server runs as {runner.pw_name} and cannot act as '{build.pw_name}'"
                in one_line(refused))
        own = lab.run(alice, server, "id", "-un", host=f"{runner.pw_name}@127.0.0.1")
        assert (own.returncode, own.stdout) == (0, f"{runner.pw_name}\n".encode()), own.stderr
    finally:
        stop_process(server.proc)
    assert stat.S_IMODE(os.stat(python).st_mode) & 0o001  # anyone may run it


def test_processes_are_limited_per_account_across_identities(
        lab: Lab, accounts: list[pwd.struct_passwd], open_dir: Path) -> None:
    build = accounts[0]
    server = lab.server("s", "--max-processes-per-client", "1",
                        principals=f"dev user={build.pw_name},root\n")
    alice, bob = lab.client("alice", ("dev",)), lab.client("bob", ("dev",))
    host = f"{build.pw_name}@127.0.0.1"
    started = Path(build.pw_dir) / "started"  # the account may write only its own files
    first = subprocess.Popen(
        [*TETHER, "run", "-p", str(server.port), "--accept-new", host, "--",
         f"touch {started}; sleep 30"], env=env_for(alice), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(started.exists, timeout=30)
        workers = [p for p in psutil.Process(server.pid).children()
                   if p.uids().real == build.pw_uid]
        assert len(workers) == 1
        uids = workers[0].uids()
        assert (uids.real, uids.effective, uids.saved) == (build.pw_uid,) * 3
        # non-dumpable (it changed credentials): its /proc files stay root's, so the account
        # cannot read its memory or descriptors
        assert os.stat(f"/proc/{workers[0].pid}/environ").st_uid == 0
        second = lab.run(bob, server, "true", host=host, opts=("--accept-new",))
        assert second.returncode != 0
        assert "too many processes for this account" in one_line(second)
        own = lab.run(bob, server, "echo", "as the server's account", host="root@127.0.0.1")
        assert (own.returncode, own.stdout) == (0, b"as the server's account\n"), own.stderr
    finally:
        stop_process(first)
    assert wait_until(lambda: not _owned_by(build.pw_uid), timeout=15), "processes linger"
    again = lab.run(bob, server, "echo", "free", host=host)
    assert (again.returncode, again.stdout) == (0, b"free\n"), again.stderr


def test_connections_are_limited_per_account_across_identities(
        lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    build, other = accounts
    server = lab.server("s", "--max-connections-per-client", "1",
                        principals=f"dev user={build.pw_name},{other.pw_name}\n")
    alice, bob = lab.client("alice", ("dev",)), lab.client("bob", ("dev",))
    started = Path(build.pw_dir) / "started"
    first = subprocess.Popen(
        [*TETHER, "run", "-p", str(server.port), "--accept-new", f"{build.pw_name}@127.0.0.1",
         "--", f"touch {started}; sleep 30"], env=env_for(alice), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(started.exists, timeout=30)
        second = lab.run(bob, server, "true", host=f"{build.pw_name}@127.0.0.1",
                         opts=("--accept-new",))
        assert second.returncode == 1  # Busy is a RemoteError: refused, the connection was fine
        assert f"too many connections for the account {build.pw_name}" in one_line(second)
        assert refused_in_audit(server, "too many connections for the account")
        elsewhere = lab.run(bob, server, "id", "-un", host=f"{other.pw_name}@127.0.0.1")
        assert (elsewhere.returncode, elsewhere.stdout) == (0, f"{other.pw_name}\n".encode())
    finally:
        stop_process(first)
    # the first connection gone, the account is free again
    assert wait_until(lambda: lab.run(bob, server, "true", host=f"{build.pw_name}@127.0.0.1"
                                      ).returncode == 0, timeout=15)


def test_stopping_the_server_ends_the_workers_and_their_commands(
        lab: Lab, accounts: list[pwd.struct_passwd], open_dir: Path) -> None:
    build = accounts[0]
    server = lab.server("s", principals=f"dev user={build.pw_name}\n")
    alice = lab.client("alice", ("dev",))
    started = Path(build.pw_dir) / "started"  # the account may write only its own files
    running = subprocess.Popen(
        [*TETHER, "run", "-p", str(server.port), "--accept-new", f"{build.pw_name}@127.0.0.1",
         "--", f"touch {started}; sleep 60"], env=env_for(alice), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert wait_until(started.exists, timeout=30)
        assert _owned_by(build.pw_uid)
        server.stop()
        _, err = running.communicate(timeout=30)
        assert running.returncode == 255
        assert b"shutting down" in err
        assert wait_until(lambda: not _owned_by(build.pw_uid), timeout=15), "processes linger"
    finally:
        stop_process(running)


def test_an_inventory_user_and_a_fleet_run_as_the_account(
        lab: Lab, accounts: list[pwd.struct_passwd]) -> None:
    build, deploy = accounts
    servers = [lab.server(f"s{i}", principals=f"dev user={build.pw_name},{deploy.pw_name}\n")
               for i in range(2)]
    alice = lab.client("alice", ("dev",))
    ok(tether("hosts", "add", "web1", "127.0.0.1", "-p", str(servers[0].port), "--user",
              deploy.pw_name, "-g", "web", home=alice))
    ok(tether("hosts", "add", "web2", "127.0.0.1", "-p", str(servers[1].port), "-g", "web",
              home=alice))
    one = tether("run", "--accept-new", "web1", "--", "id", "-un", home=alice)
    assert (one.returncode, one.stdout) == (0, f"{deploy.pw_name}\n".encode()), one.stderr
    fleet = tether("run", "--accept-new", f"{build.pw_name}@@web", "--", "id", "-un",
                   home=alice)
    assert fleet.returncode == 0, fleet.stderr
    assert sorted(fleet.stdout.decode().splitlines()) == sorted(
        f"{build.pw_name}@web{i} | {build.pw_name}" for i in (1, 2)), fleet.stdout
