"""An Ansible project around the tether connection plugin, for the tests and the benchmark.

It makes a client identity, starts real ``tether serve`` processes on 127.0.0.x loopback
addresses (each its own address, as separate machines would be), pins them, and writes an
``ansible.cfg`` and an inventory that point ansible-core at this repository's collection
(``ansible_collections/tether/remote``). Playbooks run as real ``ansible-playbook`` processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from support import TETHER, ServeProcess, start_serve
from tether.home import add_known_host

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
BIN = Path(sys.executable).parent
# The targets' interpreter runs modules, also as a become user who may not reach this venv's
# python (under root's home, say): the system's python3 when there is one.
TARGET_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def ansible_available() -> bool:
    return (BIN / "ansible-playbook").exists() or shutil.which("ansible-playbook") is not None


def ansible_tool(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else name


def _run_tether(home: Path, *args: str) -> str:
    done = subprocess.run([*TETHER, *args], capture_output=True, timeout=60,
                          env={**os.environ, "TETHER_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


@dataclass
class Host:
    """One inventory host: a name, a tether server on its own loopback address, host vars."""

    name: str
    address: str
    server: ServeProcess | None
    port: int
    vars: dict[str, str] = field(default_factory=dict)


@dataclass
class Project:
    """A directory with ansible.cfg, an inventory, a client identity and its servers."""

    root: Path
    client_home: Path
    hosts: list[Host] = field(default_factory=list)
    extra_cfg: str = ""

    @classmethod
    def create(cls, root: Path) -> Project:
        root.mkdir(parents=True, exist_ok=True)
        home = root / "client-home"
        _run_tether(home, "keygen", "--name", "ansible-controller")
        return cls(root, home)

    def add_server(self, name: str, address: str, users: tuple[str, ...] = (),
                   **host_vars: str) -> Host:
        """Start ``tether serve`` on ``address`` with the controller authorized (allowed the
        Unix accounts ``users`` too, besides the server's own) and pinned."""
        server_home = self.root / f"server-{name}"
        identity_line = _run_tether(self.client_home, "id").strip()
        accounts = [arg for user in users for arg in ("--user", user)]
        _run_tether(server_home, "authorize", *accounts, identity_line)
        server = start_serve(server_home, self.root / f"root-{name}", self.root / f"{name}.log",
                             "--host", address, env=dict(os.environ), new_session=True)
        add_known_host(self.client_home, address, server.port, server.fingerprint)
        host = Host(name, address, server, server.port, dict(host_vars))
        self.hosts.append(host)
        return host

    def add_host(self, name: str, address: str, port: int, **host_vars: str) -> Host:
        """A host with no server started here (unreachable, or served by the test itself)."""
        host = Host(name, address, None, port, dict(host_vars))
        self.hosts.append(host)
        return host

    def stop(self) -> None:
        """Stop the servers, and the mux the plugin started for this identity."""
        from tether.client import mux

        with contextlib.suppress(mux.MuxUnavailable):
            mux.request(self.client_home, {"op": "stop"})
        for host in self.hosts:
            if host.server is not None:
                host.server.stop()

    @property
    def cfg(self) -> Path:
        return self.root / "ansible.cfg"

    def write(self) -> None:
        """Write ansible.cfg and inventory.ini for the hosts added so far."""
        (self.root / "remote-tmp").mkdir(exist_ok=True)
        self.cfg.write_text(
            "[defaults]\n"
            f"collections_path = {REPO}\n"
            "inventory = inventory.ini\n"
            f"local_tmp = {self.root}/local-tmp\n"
            f"remote_tmp = {self.root}/remote-tmp\n"
            "forks = 10\n"
            "retry_files_enabled = false\n"
            "interpreter_python = auto_silent\n"
            f"{self.extra_cfg}"
        )
        lines = ["[targets]"]
        for host in self.hosts:
            pairs = {"ansible_host": host.address, "ansible_port": str(host.port), **host.vars}
            lines.append(" ".join([host.name, *(f"{k}={v}" for k, v in pairs.items())]))
        lines += [
            "", "[targets:vars]",
            "ansible_connection=tether.remote.tether",
            f"tether_home={self.client_home}",
            f"ansible_python_interpreter={TARGET_PYTHON}",
        ]
        (self.root / "inventory.ini").write_text("\n".join(lines) + "\n")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.update(ANSIBLE_CONFIG=str(self.cfg), LANG="C.UTF-8", LC_ALL="C.UTF-8",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", TETHER_HOME=str(self.client_home),
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        env.update(extra)
        return env

    def playbook(self, playbook: str, *args: str, timeout: float = 300,
                 **env: str) -> subprocess.CompletedProcess[str]:
        """``ansible-playbook`` on one of tests/ansible/playbooks, output captured as text."""
        return subprocess.run(
            [ansible_tool("ansible-playbook"), str(PLAYBOOKS / playbook), *args],
            cwd=self.root, capture_output=True, text=True, timeout=timeout, env=self.env(**env),
            stdin=subprocess.DEVNULL,
        )

    def adhoc(self, pattern: str, *args: str, timeout: float = 120,
              **env: str) -> subprocess.CompletedProcess[str]:
        """``ansible PATTERN ARGS``, output captured as text."""
        return subprocess.run(
            [ansible_tool("ansible"), pattern, *args], cwd=self.root, capture_output=True,
            text=True, timeout=timeout, env=self.env(**env), stdin=subprocess.DEVNULL,
        )
