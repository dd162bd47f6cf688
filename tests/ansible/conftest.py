"""Fixtures for the Ansible tests: one project (identity, servers on 127.0.0.x, ansible.cfg,
inventory) per module, and a throwaway Unix user to become."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Project


@pytest.fixture(scope="module")
def project_dir() -> Iterator[Path]:
    """A directory other users may traverse (pytest's own tmp is 0700), for become tests."""
    root = Path(tempfile.mkdtemp(prefix="tether-ansible-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def become_user() -> Iterator[str]:
    """A throwaway Unix user (root only), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("sudo") is None:
        pytest.skip("creating a user to become needs root, useradd and sudo")
    name = f"tb{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    yield name
    subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="module")
def account_user() -> Iterator[str]:
    """A throwaway Unix user with a home directory (a mapped session starts there), removed
    afterwards with its home (root only)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a user to run as needs root and useradd")
    name = f"ta{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    yield name
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def project(project_dir: Path) -> Iterator[Project]:
    """Two hosts on their own loopback addresses: ``pipe`` (pipelining, workers sharing its
    connection through tether mux) and ``nopipe`` (no pipelining, a connection per task)."""
    proj = Project.create(project_dir / "ansible")
    try:
        proj.add_server("pipe", "127.0.0.2", ansible_pipelining="true")
        proj.add_server("nopipe", "127.0.0.3", ansible_pipelining="false", tether_mux="no")
        proj.write()
        yield proj
    finally:
        proj.stop()
