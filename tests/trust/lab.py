"""A fleet lab for the trust tests: a CA made with ``tether ca init``, clients whose keys it
signs (with chosen principals and validity), and ``tether serve`` subprocesses trusting it.

CA operations a test is not about go through :mod:`tether.ca` in-process (a CLI call costs a
fraction of a second); what a user types (`tether ca ...`, `cert install`, `trust-ca`, `run`) is
run as the real CLI.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import TETHER, ServeProcess, start_serve, wait_until
from tether import ca as ca_lib
from tether.identity import load_identity

HOST = "127.0.0.1"
CLI_TIMEOUT = 60.0


def env_for(home: Path | None = None, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    if home is not None:
        env["TETHER_HOME"] = str(home)
    env.update(extra)
    return env


def tether(*args: str, home: Path | None = None, timeout: float = CLI_TIMEOUT,
           input: bytes | None = None, **extra: str) -> subprocess.CompletedProcess[bytes]:
    """One ``tether`` command to completion (no terminal: a new session, stdin /dev/null)."""
    return subprocess.run(
        [*TETHER, *args], capture_output=True, timeout=timeout, env=env_for(home, **extra),
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
        start_new_session=True,
    )


def ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """The one stderr line of a refused command (a warning line about expiry is allowed)."""
    lines = [ln for ln in done.stderr.decode().splitlines() if "warning:" not in ln]
    assert len(lines) == 1, f"not one line: {done.stderr!r}"
    return lines[0]


def audit_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Lab:
    """One CA, and the homes and servers made under ``tmp``."""

    tmp: Path
    servers: list[ServeProcess] = field(default_factory=list)

    @property
    def ca_dir(self) -> Path:
        return self.tmp / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca_cert.pem"

    def client(self, name: str, principals: tuple[str, ...] = (), valid: str = "30d",
               start: datetime.datetime | None = None, install: bool = True) -> Path:
        """A client home with a key; with ``principals``, a certificate signed and installed
        (``start``: a chosen not-before, e.g. in the past for an expired certificate)."""
        home = self.tmp / "clients" / name
        ok(tether("keygen", "--name", name, home=home))
        if principals:
            line = self.sign_user(home, principals, valid, start)
            if install:
                ok(tether("cert", "install", line, home=home))
        return home

    def sign_user(self, home: Path, principals: tuple[str, ...], valid: str = "8h",
                  start: datetime.datetime | None = None, allow: str | None = None) -> str:
        der = load_identity(home).cert_der
        cert = ca_lib.sign(self.ca_dir, der, "user", principals, ca_lib.parse_duration(valid),
                           None if allow is None else frozenset(allow.split(",")), None, start)
        return f"tether-cert {_b64(ca_lib.der(cert))} {home.name}"

    def server(self, name: str, *extra: str, principals: str = "", crl: bool = False,
               trust: bool = True) -> ServeProcess:
        home = self.tmp / "servers" / name
        home.mkdir(parents=True, exist_ok=True)
        if principals:
            (home / "principals").write_text(principals)
        args = [*extra, "--audit", str(home / "audit.log")]
        if trust:
            args += ["--trust-ca", str(self.ca_cert)]
        if crl:
            args += ["--crl", str(self.ca_dir / "crl.pem")]
        server = start_serve(home, self.tmp / "roots" / name, self.tmp / f"{name}.log", *args,
                             env=env_for())
        self.servers.append(server)
        return server

    def run(self, home: Path, server: ServeProcess, *command: str, host: str = HOST,
            opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        return tether("run", "-p", str(server.port), *opts, host, "--", *command, home=home)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def refused_in_audit(server: ServeProcess, text: str) -> bool:
    """Whether the server's audit log records a refusal whose reason contains ``text``."""
    def seen() -> bool:
        return any(e["event"] == "refused" and text in e.get("reason", "")
                   for e in audit_events(server.home / "audit.log"))
    return wait_until(seen, timeout=10)


def lab_fixture(tmp: Path) -> Iterator[Lab]:
    lab = Lab(tmp)
    ok(tether("ca", "init", str(lab.ca_dir), "--name", "Test Lab CA"))
    ok(tether("ca", "crl", str(lab.ca_dir)))
    try:
        yield lab
    finally:
        lab.stop()
