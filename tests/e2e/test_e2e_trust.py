"""Trust end to end: unauthorized clients, unknown servers, and servers whose identity changed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support import wait_until
from tether.identity import load_authorized, load_identity, lookup_known_host

if TYPE_CHECKING:

    from conftest import Client, ClientHomeFactory, ServerFactory


def _run_detached(client: Client, command: str, *opts: str) -> subprocess.CompletedProcess[bytes]:
    """``tether run`` with no terminal at all: stdin /dev/null and no controlling tty."""
    return client.run(command, opts=opts, start_new_session=True)


def _one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    return text


def test_unauthorized_client_is_refused(
    client: Client, make_client_home: ClientHomeFactory
) -> None:
    stranger = client.other(home=make_client_home("stranger"))
    marker = client.server.root / "stranger-was-here"
    done = _run_detached(stranger, f"touch {marker}", "--accept-new")
    assert done.returncode == 255
    line = _one_line(done.stderr)
    assert "not authorized" in line
    assert load_identity(stranger.home).fingerprint in line
    assert done.stdout == b""
    assert not marker.exists(), "the command ran"


def test_authorizing_takes_effect_without_restart(
    client: Client, make_client_home: ClientHomeFactory, cli: Callable[..., Any]
) -> None:
    newcomer = client.other(home=make_client_home("newcomer"))
    assert _run_detached(newcomer, "true", "--accept-new").returncode == 255
    line = cli("id", home=newcomer.home).stdout.decode().strip()
    assert cli("authorize", line, home=client.server.home).returncode == 0
    done = _run_detached(newcomer, "echo welcome")
    assert (done.returncode, done.stdout) == (0, b"welcome\n")


def test_authorized_identities_with_the_same_name_both_connect(
    client: Client, make_client_home: ClientHomeFactory
) -> None:
    twins = [client.other(home=make_client_home(f"twin{i}", authorized=True, name="twin@host"))
             for i in (1, 2)]
    done = [_run_detached(twin, "echo in", "--accept-new") for twin in twins]
    assert [(d.returncode, d.stdout) for d in done] == [(0, b"in\n")] * 2, done[1].stderr


def test_unknown_server_without_accept_new_is_refused(
    client: Client, make_client_home: ClientHomeFactory
) -> None:
    fresh = client.other(home=make_client_home("unpinned", authorized=True))
    marker = client.server.root / "unpinned-was-here"
    done = _run_detached(fresh, f"touch {marker}")
    assert done.returncode == 255
    line = _one_line(done.stderr)
    assert "--accept-new" in line
    assert client.server.fingerprint in line
    assert not marker.exists()
    assert lookup_known_host(fresh.home, "127.0.0.1", fresh.port) is None


def test_accept_new_pins_the_server(client: Client, make_client_home: ClientHomeFactory) -> None:
    fresh = client.other(home=make_client_home("pinning", authorized=True))
    done = _run_detached(fresh, "echo pinned", "--accept-new")
    assert (done.returncode, done.stdout) == (0, b"pinned\n"), done.stderr
    assert lookup_known_host(fresh.home, "127.0.0.1", fresh.port) == client.server.fingerprint
    assert _run_detached(fresh, "true").returncode == 0  # no --accept-new needed any more


def test_changed_server_identity_is_refused(client: Client, make_server: ServerFactory) -> None:
    first = make_server()
    assert _run_detached(client.other(server=first), "true").returncode == 0
    first.stop()
    for name in ("server_key.pem", "server_cert.pem"):
        (first.home / name).unlink()
    second = make_server(home=first.home, port=first.port, pinned=False)  # a new identity
    assert second.fingerprint != first.fingerprint
    marker = second.root / "impostor-ran-this"
    for opts in ((), ("--accept-new",)):  # --accept-new never overrides a changed identity
        done = _run_detached(client.other(server=second), f"touch {marker}", *opts)
        assert done.returncode == 255
        line = _one_line(done.stderr)
        assert first.fingerprint in line
        assert second.fingerprint in line
        assert "CHANGED" in line.upper()
        assert f"tether known-hosts forget 127.0.0.1 -p {second.port}" in line
    assert not marker.exists()


def test_forgetting_a_changed_server_lets_it_be_pinned_again(
    client: Client, make_server: ServerFactory, cli: Callable[..., Any]
) -> None:
    first = make_server()
    user = client.other(server=first)
    assert _run_detached(user, "true").returncode == 0
    known = user.home / "known_hosts"
    known.write_text(f"# my notes\nother.example {first.fingerprint}\n" + known.read_text())
    pin = f"[127.0.0.1]:{first.port} {first.fingerprint}\n"
    kept = known.read_text().replace(pin, "")
    assert kept != known.read_text()
    first.stop()
    for name in ("server_key.pem", "server_cert.pem"):
        (first.home / name).unlink()
    second = make_server(home=first.home, port=first.port, pinned=False)
    assert _run_detached(client.other(server=second), "true").returncode == 255

    wrong_port = cli("known-hosts", "forget", "127.0.0.1", "-p", "1", home=user.home)
    assert wrong_port.returncode == 1
    assert "no pin for 127.0.0.1 port 1" in _one_line(wrong_port.stderr)
    done = cli("known-hosts", "forget", f"[127.0.0.1]:{second.port}", home=user.home)
    assert done.returncode == 0, done.stderr
    assert b"removed 1 pin(s)" in done.stdout
    assert known.read_text() == kept
    assert lookup_known_host(user.home, "127.0.0.1", second.port) is None

    again = _run_detached(client.other(server=second), "echo pinned", "--accept-new")
    assert (again.returncode, again.stdout) == (0, b"pinned\n"), again.stderr
    assert lookup_known_host(user.home, "127.0.0.1", second.port) == second.fingerprint
    listed = cli("known-hosts", "list", home=user.home).stdout.decode()
    assert f"[127.0.0.1]:{second.port} {second.fingerprint}" in listed


ADMIN_NOTES = "# managed by hand: ask ops before editing\n\n# --- build machines ---\n"


def _id_line(cli: Callable[..., Any], home: Path) -> str:
    done = cli("id", home=home)
    assert done.returncode == 0, done.stderr
    return str(done.stdout.decode().strip())


def test_authorize_keeps_the_admins_comments_and_blank_lines(
    tmp_path: Path, make_client_home: ClientHomeFactory, cli: Callable[..., Any]
) -> None:
    server_home = tmp_path / "noted-server"
    first, second = make_client_home("noted1"), make_client_home("noted2")
    assert cli("authorize", _id_line(cli, first), home=server_home).returncode == 0
    path = server_home / "authorized"
    entry = path.read_text()
    path.write_text(ADMIN_NOTES + entry + "\n# end of build machines\n")

    added = cli("authorize", _id_line(cli, second), home=server_home)
    assert added.returncode == 0, added.stderr
    lines = path.read_text().splitlines()
    assert lines[:5] == [*ADMIN_NOTES.splitlines(), entry.strip(), ""]
    assert lines[5] == "# end of build machines"
    assert lines[6].endswith(" noted2") and len(lines) == 7

    renamed = cli("authorize", "--name", "builder", _id_line(cli, first), home=server_home)
    assert renamed.returncode == 0, renamed.stderr
    after = path.read_text().splitlines()
    assert after[3].endswith(" builder"), "the entry is replaced where it stood"
    assert after[:3] + after[4:] == lines[:3] + lines[4:]
    assert set(load_authorized(server_home)) == {load_identity(h).fingerprint
                                                 for h in (first, second)}


def test_authorize_with_a_damaged_line_changes_nothing(
    tmp_path: Path, make_client_home: ClientHomeFactory, cli: Callable[..., Any]
) -> None:
    server_home = tmp_path / "damaged-server"
    server_home.mkdir()
    path = server_home / "authorized"
    path.write_text("# notes\ntether-cert not-base64!! someone\n")
    done = cli("authorize", _id_line(cli, make_client_home("late")), home=server_home)
    assert done.returncode == 1
    assert _one_line(done.stderr).startswith("tether: ") and "authorized:2:" in done.stderr.decode()
    assert path.read_text() == "# notes\ntether-cert not-base64!! someone\n"


def _authorized_lines(home: Path) -> list[str]:
    return [ln for ln in (home / "authorized").read_text().splitlines() if ln.strip()]


def test_authorize_refuses_a_cut_paste_and_writes_nothing(
    tmp_path: Path, make_client_home: ClientHomeFactory, cli: Callable[..., Any]
) -> None:
    server_home = tmp_path / "paste-server"
    line = _id_line(cli, make_client_home("paster"))
    done = cli("authorize", line[:200], home=server_home)
    assert done.returncode == 1
    assert "certificate" in _one_line(done.stderr)
    assert not (server_home / "authorized").exists()


def test_a_damaged_entry_locks_out_only_itself_and_never_keeps_a_stale_list(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory,
    cli: Callable[..., Any]
) -> None:
    server = make_server()
    other_home = make_client_home("other")
    assert cli("authorize", _id_line(cli, other_home), home=server.home).returncode == 0
    other = client.other(server=server, home=other_home)
    assert _run_detached(other, "true", "--accept-new").returncode == 0
    mine, theirs = _authorized_lines(server.home)
    # the admin removes "other" and, in the same edit, damages the shared client's entry
    (server.home / "authorized").write_text(mine[:150] + "\n")
    refused = _run_detached(other, "true")
    assert refused.returncode == 255, "a removed client was still admitted"
    assert _run_detached(client.other(server=server), "true").returncode == 255
    wait_until(lambda: "skipped in the authorized list" in server.log_text(), timeout=10)
    assert re.search(r"authorized:1: .*damaged", server.log_text())
    # one damaged line does not lock out the valid ones
    (server.home / "authorized").write_text("tether-cert AAAA broken\n" + theirs + "\n")
    assert _run_detached(other, "echo still").stdout == b"still\n"


def test_authorize_list_and_revoke(
    tmp_path: Path, make_client_home: ClientHomeFactory, cli: Callable[..., Any]
) -> None:
    server_home = tmp_path / "listed-server"
    assert cli("authorize", "--list", home=server_home).returncode == 0
    homes = [make_client_home(f"lab{i}", name="ci@build") for i in (1, 2)]
    fps = [load_identity(h).fingerprint for h in homes]
    root = tmp_path / "jail"
    root.mkdir()
    added = cli("authorize", "--root", str(root.relative_to(tmp_path)), "--allow", "get",
                _id_line(cli, homes[0]), home=server_home, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert cli("authorize", _id_line(cli, homes[1]), home=server_home).returncode == 0
    missing = cli("authorize", "--root", str(tmp_path / "nope"), _id_line(cli, homes[1]),
                  home=server_home)
    assert missing.returncode == 2

    listed = cli("authorize", "--list", home=server_home).stdout.decode().splitlines()
    assert listed == [f"ci@build\t{fps[0]}\t{root}\tget",
                      f"ci@build\t{fps[1]}\t-\texec,shell,put,get,forward"]
    as_json = json.loads(cli("authorize", "--list", "--json", home=server_home).stdout)
    assert as_json[0] == {"name": "ci@build", "fingerprint": fps[0], "root": str(root),
                          "permissions": ["get"]}

    ambiguous = cli("authorize", "--revoke", "ci@build", home=server_home)
    assert ambiguous.returncode == 1
    assert "2 clients match" in _one_line(ambiguous.stderr)
    gone = cli("authorize", "--revoke", fps[1][:15], home=server_home)
    assert gone.returncode == 0, gone.stderr
    assert set(load_authorized(server_home)) == {fps[0]}
    assert cli("authorize", "--revoke", fps[1][:15], home=server_home).returncode == 1
    both = cli("authorize", "--list", "--revoke", "x", home=server_home)
    assert both.returncode == 2


def test_a_server_nobody_may_reach_says_so(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    home = tmp_path / "lonely"
    home.mkdir()
    (home / "authorized").write_text("# nobody yet\n")
    server = make_server(home=home, pinned=False)
    wait_until(lambda: "no client is authorized yet" in server.log_text(), timeout=10)
    assert "tether authorize" in server.log_text()


def test_an_identity_name_too_long_for_a_certificate_is_a_usage_error(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    for command in (("serve", "-p", "0"), ("keygen",)):
        done = cli(*command, "--name", "x" * 65, home=tmp_path / "h")
        assert done.returncode == 2, done.stderr
        assert b"1 to 64 printable characters" in done.stderr
        assert b"Traceback" not in done.stderr and b"internal error" not in done.stderr
    assert not (tmp_path / "h").exists()
    assert cli("keygen", "--name", "x" * 64, home=tmp_path / "h").returncode == 0


def test_a_same_size_swap_with_a_kept_mtime_is_reloaded(
    client: Client, make_server: ServerFactory, make_client_home: ClientHomeFactory,
    cli: Callable[..., Any]
) -> None:
    server = make_server()
    path = server.home / "authorized"
    before = path.stat()
    ours = path.read_text()
    twin_home = make_client_home("twin", name="x" * len(load_identity(client.home).name))
    twin = client.other(server=server, home=twin_home)
    assert _run_detached(client.other(server=server), "true").returncode == 0
    # a configuration manager swaps in another identity of the same size, keeping the mtime
    swapped = _id_line(cli, twin_home)
    assert len(swapped) == len(ours.strip())
    path.write_text(swapped + "\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert _run_detached(client.other(server=server), "true").returncode == 255
    assert _run_detached(twin, "echo swapped", "--accept-new").stdout == b"swapped\n"
