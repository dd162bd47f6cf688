"""ansible-core's generic connection tests, in tether's own playbooks, against the plugin, with
a pipelining and a non-pipelining host; errors (unreachable, unknown fingerprint, exit status);
and everyday modules with become."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from support import wait_until
from tether.client import mux
from tether.home import known_hosts_file

from .harness import Project, ansible_available, ansible_tool

pytestmark = pytest.mark.skipif(not ansible_available(), reason="ansible-core is not installed")


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
    return port


def _recap(output: str, host: str) -> dict[str, int]:
    match = re.search(rf"^{host}\s*:\s*(.*)$", output, re.M)
    assert match, output
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _all_ok(done: object, hosts: tuple[str, ...] = ("pipe", "nopipe")) -> None:
    out = getattr(done, "stdout", "") + getattr(done, "stderr", "")
    assert getattr(done, "returncode", None) == 0, out[-6000:]
    for host in hosts:
        recap = _recap(out, host)
        assert recap["failed"] == 0 and recap["unreachable"] == 0, out[-6000:]


def test_raw_copy_fetch_and_wait_for_connection(project: Project, project_dir: Path) -> None:
    done = project.playbook("connection.yml", "-e", f"work_dir={project_dir}")
    _all_ok(done)
    assert _recap(done.stdout, "pipe")["ok"] >= 14
    # the workers of the pipelining host shared one connection, held by the mux; the other
    # host's connection per task was closed with its task
    pipe = next(h for h in project.hosts if h.name == "pipe")
    status = mux.request(project.client_home, {"op": "status"})
    assert [(c["host"], c["port"]) for c in status["connections"]] == [
        (pipe.address, pipe.port)]


def test_connection_vars_stay_out_of_verbose_output(project: Project) -> None:
    done = project.adhoc("targets", "-m", "set_fact", "-a", "testing=value", "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert "ansible_host" not in done.stdout + done.stderr
    assert "tether_home" not in done.stdout + done.stderr


def test_reset_connection(project: Project) -> None:
    _all_ok(project.playbook("reset.yml"))


def test_modules_and_become(project: Project, project_dir: Path, become_user: str) -> None:
    done = project.playbook("modules.yml", "-e", f"work_dir={project_dir}",
                            "-e", f"become_target={become_user}")
    _all_ok(done)


def test_unreachable_host_is_unreachable_with_tethers_reason(project_dir: Path) -> None:
    proj = Project.create(project_dir / "unreachable")
    proj.add_host("gone", "127.0.0.4", _free_port("127.0.0.4"))
    proj.write()
    try:
        done = proj.adhoc("gone", "-m", "ping")
    finally:
        proj.stop()
    assert done.returncode == 4, done.stdout + done.stderr  # 4: a host was unreachable
    assert "UNREACHABLE!" in done.stdout
    assert "FAILED" not in done.stdout
    assert re.search(r"tether: .*(refused|Connect call failed)", done.stdout), done.stdout


def test_unknown_fingerprint_says_how_to_pin(project_dir: Path) -> None:
    proj = Project.create(project_dir / "unknown")
    host = proj.add_server("fresh", "127.0.0.5")
    Path(known_hosts_file(proj.client_home)).unlink()  # the server is authorized but not pinned
    proj.write()
    try:
        done = proj.adhoc("fresh", "-m", "ping")
        assert done.returncode == 4, done.stdout + done.stderr
        assert "UNREACHABLE!" in done.stdout
        assert "is not known" in done.stdout
        assert host.server is not None and host.server.fingerprint in done.stdout
        assert "tether_accept_new" in done.stdout
        pinned = proj.adhoc("fresh", "-m", "ping", "-e", "tether_accept_new=true")
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
        assert "pong" in pinned.stdout
        again = proj.adhoc("fresh", "-m", "ping")  # pinned now: no option needed
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        proj.stop()


def test_a_failing_command_is_failed_with_its_status(project: Project) -> None:
    done = project.adhoc("pipe", "-m", "command", "-a", "sh -c 'echo bad >&2; exit 7'")
    assert done.returncode == 2, done.stdout + done.stderr  # 2: a task failed
    assert "FAILED" in done.stdout and "rc=7" in done.stdout
    assert "UNREACHABLE" not in done.stdout


def test_the_command_timeout_kills_a_task_and_says_so(project: Project) -> None:
    done = project.adhoc("pipe", "-m", "command", "-a", "sleep 60",
                         "-e", "tether_command_timeout=1", timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr  # 2: a task failed
    assert "FAILED" in done.stdout and "UNREACHABLE" not in done.stdout
    assert "the server killed the command after tether_command_timeout (1 s)" in done.stdout


@pytest.mark.parametrize("shared", ["auto", "no"])
def test_a_silent_server_is_unreachable_after_the_keepalive(project_dir: Path,
                                                            shared: str) -> None:
    proj = Project.create(project_dir / f"silent-{shared}")
    host = proj.add_server("silent", "127.0.0.6", tether_keepalive="1", tether_mux=shared)
    proj.write()
    assert host.server is not None
    server = psutil.Process(host.server.proc.pid)
    task = subprocess.Popen([ansible_tool("ansible"), "silent", "-m", "command", "-a", "sleep 60"],
                            cwd=proj.root, env=proj.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: any(p.name() == "sleep" for p in
                                      server.children(recursive=True)), 60), "no task started"
        os.kill(server.pid, signal.SIGSTOP)  # the host stops answering; TCP stays up
        out, err = task.communicate(timeout=60)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        if task.poll() is None:
            task.kill()
            task.wait()
        proj.stop()
    assert task.returncode == 4, out + err  # 4: a host was unreachable
    assert "UNREACHABLE!" in out and "no answer from the server for 3 s" in out, out


def test_ansible_user_is_the_account_tasks_run_as(project_dir: Path, account_user: str) -> None:
    proj = Project.create(project_dir / "accounts")
    own = pwd.getpwuid(os.geteuid()).pw_name
    shared = proj.add_server("shared", "127.0.0.7", users=(account_user, own),
                             ansible_user=account_user, ansible_pipelining="true")
    proj.add_server("direct", "127.0.0.8", users=(account_user, own), ansible_user=account_user,
                    ansible_pipelining="true", tether_mux="no")
    proj.write()
    try:
        done = proj.adhoc("targets", "-m", "command", "-a", "id -un")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(f"CHANGED | rc=0 >>\n{account_user}\n") == 2, done.stdout
        # the same host as another account, through the same mux: a connection of its own
        again = proj.adhoc("shared", "-m", "command", "-a", "id -un", "-e", f"ansible_user={own}")
        assert again.returncode == 0 and f">>\n{own}\n" in again.stdout, again.stdout
        status = mux.request(proj.client_home, {"op": "status"})
        assert sorted((c["host"], c["port"], c["user"]) for c in status["connections"]) == [
            (shared.address, shared.port, user) for user in sorted((account_user, own))]
        refused = proj.adhoc("targets", "-m", "ping", "-e", "ansible_user=nobody")
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert refused.stdout.count("UNREACHABLE!") == 2
        assert len(re.findall(r'"msg": "Task failed: tether: not authorized: .* may not use '
                              r"the account 'nobody'", refused.stdout)) == 2, refused.stdout
    finally:
        proj.stop()
