"""What the Windows tests share: one ``tether serve`` under Wine per test module, run by the
Windows embeddable CPython (laid out by ``winpy.py prepare``, which ``.ci/run`` runs) with
``LANG=zh_CN.UTF-8``, so its code pages are cp936 (GBK), listening on 127.0.0.1 with port 0 and,
for the classic tutorial's clients, a classic port. The Linux client drives it. Its output goes
through a pipe into a log file (Wine's python cannot take a regular file as stdout); it is
stopped by PID at the end of the module.

Without Wine, the Chinese locale or the laid-out python these tests are skipped with that
reason, except under CI (``CI`` set), where that is a failure: the suite must not pass by not
running.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import stop_process, wait_until
from tether.identity import host_key, known_hosts_path

from . import winpy

HOST = "127.0.0.1"
LISTENING = re.compile(r"listening on [\d.]+:(\d+), fingerprint (SHA256:\S+)")
CLASSIC = re.compile(r"classic protocol on [\d.]+:(\d+)")
START_TIMEOUT = 120.0  # Wine starts slowly on a loaded 2-core machine
CHINESE_DIR = "汉语目录"


def require_wine() -> None:
    reason = winpy.ready()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the Windows suite cannot run in CI: {reason}")
    pytest.skip(reason)


def linux_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    if home is not None:
        env["TETHER_HOME"] = str(home)
    env.update(extra)
    return env


def tether(*args: str, home: Path, input: bytes | None = None, timeout: float = 90,
           **env: str) -> subprocess.CompletedProcess[bytes]:
    """The Linux ``tether`` CLI, to completion, bytes captured."""
    from support import TETHER

    return subprocess.run([*TETHER, *args], input=input, capture_output=True, timeout=timeout,
                          env=linux_env(home, **env),
                          stdin=None if input is not None else subprocess.DEVNULL)


@dataclass
class WinServer:
    """A ``tether serve`` under Wine and the Linux client authorized and pinned on it."""

    proc: subprocess.Popen[bytes]
    home: Path
    root: Path
    log: Path
    port: int
    fingerprint: str
    classic_port: int
    client_home: Path
    confined_home: Path  # a second client, authorized with --root ROOT/confined
    copier: threading.Thread  # copies the server's output into ``log``

    @property
    def confined_root(self) -> Path:
        return self.root / "confined"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def checked(self) -> WinServer:
        assert self.proc.poll() is None, self.log_text()[-4000:]
        return self

    def run(self, *command: str, opts: tuple[str, ...] = (), input: bytes | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
        """``tether run [OPTS] -p PORT 127.0.0.1 COMMAND...`` from Linux."""
        return tether("run", *opts, "-p", str(self.port), HOST, "--", *command,
                      home=self.client_home, input=input, timeout=timeout)

    def cli(self, *args: str, timeout: float = 90, confined: bool = False
            ) -> subprocess.CompletedProcess[bytes]:
        """Another ``tether`` command as the client (``put``, ``get``, …), or as the confined
        one."""
        home = self.confined_home if confined else self.client_home
        return tether(*args, home=home, timeout=timeout)

    def remote(self, path: str) -> str:
        """``HOST:PATH`` for put/get, with the port option before it."""
        return f"{HOST}:{path}"


def _copy(pipe: object, log: Path) -> None:
    with log.open("ab") as sink:
        for line in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            sink.write(line)
            sink.flush()


def _start_copy(proc: subprocess.Popen[bytes], log: Path) -> threading.Thread:
    copier = threading.Thread(target=_copy, args=(proc.stdout, log), daemon=True)
    copier.start()
    return copier


def stop_wine(proc: subprocess.Popen[bytes], copier: threading.Thread) -> None:
    """Stop a Wine process we started, by PID, and let its log copier reach the pipe's end
    before the pipe is closed (closing it under the reading thread is an error there)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    copier.join(10)  # Wine's children may hold the pipe a moment longer
    stop_process(proc)


def start_wine_server(base: Path, *extra: str) -> WinServer:
    """Authorize a fresh Linux client on a fresh server home, start the server under Wine, wait
    for its "listening on" and classic lines, pin its fingerprint."""
    home, root, client_home = base / "server", base / "root", base / "client"
    confined_home = base / "confined-client"
    for d in (home, root, client_home, confined_home, root / "confined"):
        d.mkdir(parents=True, exist_ok=True)
    (root / CHINESE_DIR).mkdir(exist_ok=True)
    (root / CHINESE_DIR / "文件.txt").write_bytes("内容\r\n".encode("gbk"))
    assert tether("keygen", "--name", "linux-client", home=client_home).returncode == 0
    line = tether("id", home=client_home).stdout.decode().strip()
    done = tether("authorize", line, home=home)
    assert done.returncode == 0, done.stderr
    winpy.write_path_file()
    _authorize_confined(home, confined_home, root / "confined")
    log = base / "server.log"
    proc = winpy.popen(
        ["-m", "tether", "serve", "-p", "0", "--root", winpy.windows_path(root),
         "--classic-port", "0", "--kill-grace", "1", *extra],
        env={**os.environ, "TETHER_HOME": winpy.windows_path(home)},
    )
    copier = _start_copy(proc, log)
    found: dict[str, re.Match[str]] = {}

    def up() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        for key, pattern in (("tls", LISTENING), ("classic", CLASSIC)):
            match = pattern.search(text)
            if match:
                found[key] = match
        return len(found) == 2 or proc.poll() is not None

    wait_until(up, START_TIMEOUT, interval=0.1)
    if len(found) != 2:
        stop_wine(proc, copier)
        text = log.read_text(errors="replace") if log.exists() else ""
        raise AssertionError(f"tether serve under Wine did not start:\n{text[-4000:]}")
    port, fingerprint = int(found["tls"].group(1)), found["tls"].group(2)
    known_hosts_path(client_home).write_text(f"{host_key(HOST, port)} {fingerprint}\n")
    known_hosts_path(confined_home).write_text(f"{host_key(HOST, port)} {fingerprint}\n")
    return WinServer(proc, home, root, log, port, fingerprint, int(found["classic"].group(1)),
                     client_home, confined_home, copier)


def _authorize_confined(home: Path, client_home: Path, root: Path) -> None:
    """A client confined to ``root``: authorized by the Windows tether itself, so the root is
    recorded as the Windows path it is there."""
    assert tether("keygen", "--name", "confined-client", home=client_home).returncode == 0
    line = tether("id", home=client_home).stdout.decode().strip()
    proc = winpy.popen(["-m", "tether", "authorize", "--root", winpy.windows_path(root), line],
                       env={**os.environ, "TETHER_HOME": winpy.windows_path(home)})
    out, _ = proc.communicate(timeout=START_TIMEOUT)
    assert proc.returncode == 0, out.decode(errors="replace")
