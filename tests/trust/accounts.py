"""Throwaway Unix accounts for the privilege-separation tests (root only): made with useradd,
removed with userdel at the end, and a ``tether serve`` that runs as one of them.

A process running as such an account cannot execute this venv's interpreter when it lives under
a directory only root may read (a pyenv under /root), so a non-root server runs on the system's
``/usr/bin/python3.11`` in a small venv whose site directory adds this venv's (the same CPython
minor version, so the same wheels).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LISTENING, ServeProcess, await_line

SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="creating Unix accounts and switching to them needs root and useradd")


def make_account(prefix: str = "tt") -> pwd.struct_passwd:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True,
                   capture_output=True)
    return pwd.getpwnam(name)


def remove_account(name: str) -> None:
    subprocess.run(["userdel", "--force", "--remove", name], capture_output=True)


def accounts_fixture(count: int) -> Iterator[list[pwd.struct_passwd]]:
    made = [make_account() for _ in range(count)]
    try:
        yield made
    finally:
        for account in made:
            remove_account(account.pw_name)


def system_venv(where: Path) -> Path:
    """A venv of the system interpreter that sees this venv's packages; its python."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is not installed")
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(where)], check=True)
    ours = sysconfig.get_paths()["purelib"]
    site = next((where / "lib").glob("python*/site-packages"))
    (site / "tether-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return where / "bin" / "python"


def serve_as(account: pwd.struct_passwd, python: Path, home: Path, root: Path, log: Path,
             *extra: str) -> ServeProcess:
    """``tether serve`` running as ``account`` (not root)."""
    for path in (home, root):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, account.pw_uid, account.pw_gid)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": account.pw_dir,
           "TETHER_HOME": str(home)}
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [str(python), "-m", "tether", "serve", "-p", "0", "--root", str(root), *extra],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env, cwd="/",
            user=account.pw_uid, group=account.pw_gid, extra_groups=[],
        )
    match = await_line(proc, log, LISTENING)
    return ServeProcess(proc, home, root, log, int(match.group(1)), match.group(2) or "")
