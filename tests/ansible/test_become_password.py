"""become with a password prompt, for real: a throwaway user runs ``tether serve`` (with the
system's python3 and this checkout on its path), may sudo with its password, and su's to a
second throwaway user with that user's password. Root only (it makes users and a sudoers file)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import LISTENING, TETHER, await_line, stop_process
from tether.home import add_known_host

from .harness import REPO, Project, ansible_available

pytestmark = pytest.mark.skipif(not ansible_available(), reason="ansible-core is not installed")

SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class Users:
    server_user: str
    server_password: str
    su_target: str
    su_password: str


def _make_user(name: str, password: str) -> None:
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "chpasswd", "sudo")):
        pytest.skip("needs root, useradd, chpasswd and sudo")
    if not os.access(SYSTEM_PYTHON, os.X_OK) or sys.version_info[:2] != _system_version():
        pytest.skip("needs a system python3 of this venv's version to serve as another user")
    tag = uuid.uuid4().hex[:6]
    made = Users(f"ts{tag}", secrets.token_hex(8), f"tt{tag}", secrets.token_hex(8))
    sudoers = Path(f"/etc/sudoers.d/tether-test-{tag}")
    try:
        _make_user(made.server_user, made.server_password)
        _make_user(made.su_target, made.su_password)
        sudoers.write_text(f"{made.server_user} ALL=(ALL) ALL\n")
        sudoers.chmod(0o440)
        yield made
    finally:
        sudoers.unlink(missing_ok=True)
        for name in (made.server_user, made.su_target):
            subprocess.run(["userdel", name], check=False, capture_output=True)


def _system_version() -> tuple[int, int]:
    out = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.fixture(scope="module")
def served(users: Users, project_dir: Path) -> Iterator[tuple[Project, Path]]:
    """A project whose two hosts (pipelining and not) reach one server run by the user."""
    proj = Project.create(project_dir / "become")
    work = Path(tempfile.mkdtemp(prefix="tether-become-"))
    server_home = work / "server-home"
    line = subprocess.run([*TETHER, "id"], capture_output=True, text=True, check=True,
                          env={**os.environ, "TETHER_HOME": str(proj.client_home)}).stdout
    subprocess.run([*TETHER, "authorize", line.strip()], check=True, capture_output=True,
                   env={**os.environ, "TETHER_HOME": str(server_home)})
    (work / "root").mkdir()
    (work / "tmp").mkdir()
    for path in (work, *work.rglob("*")):
        shutil.chown(path, users.server_user, users.server_user)
    work.chmod(0o755)
    site = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8",
           "TETHER_HOME": str(server_home), "PYTHONPATH": f"{REPO / 'src'}:{site}"}
    log = work / "serve.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "tether", "serve", "--host", "127.0.0.6", "-p", "0",
             "--root", str(work / "root")],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env,
            user=users.server_user, group=users.server_user, extra_groups=[],
            start_new_session=True,
        )
    try:
        match = await_line(proc, log, LISTENING)
        port = int(match.group(1))
        add_known_host(proj.client_home, "127.0.0.6", port, match.group(2))
        common = {"ansible_remote_tmp": str(work / "tmp")}
        proj.add_host("sudo_pipe", "127.0.0.6", port, ansible_pipelining="true", **common)
        proj.add_host("sudo_nopipe", "127.0.0.6", port, ansible_pipelining="false", **common)
        proj.write()
        yield proj, work
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def test_sudo_and_su_answer_password_prompts(served: tuple[Project, Path], users: Users) -> None:
    proj, work = served
    done = proj.playbook(
        "become_password.yml", "-e", f"work_dir={work}",
        "-e", f"connection_user={users.server_user}",
        "-e", f"sudo_password={users.server_password}",
        "-e", f"su_target={users.su_target}", "-e", f"su_password={users.su_password}",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    for host in ("sudo_pipe", "sudo_nopipe"):
        assert f"{host}" in output
    assert "failed=0" in output and "unreachable=0" in output
    assert users.server_password not in output and users.su_password not in output
