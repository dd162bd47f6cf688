"""The one exit policy (tether.cli.policy), through the real ``tether`` console script: usage
errors exit 2, configuration errors 1, Ctrl-C 130, a closed stdout 141, a bug "internal error"
and 1 — each with at most one line on stderr and no traceback, on both front doors of ``run``
(the one-shot fast path and the click CLI, ``TETHER_FULL_CLI=1``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import TETHER

PATHS = {"fast": {}, "full": {"TETHER_FULL_CLI": "1"}}


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """This test's environment: no debug, our TETHER_HOME, a UTF-8 locale, ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DEBUG", "TETHER_HOME")}
    return {**env, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TETHER_HOME": str(home), **extra}


def tether(*args: str, home: Path, stdout: int | None = subprocess.PIPE,
           **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*TETHER, *args], stdout=stdout, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, env=cli_env(home, **env), timeout=60)


def one_line(err: bytes) -> str:
    text = err.decode()
    assert text.count("\n") == 1 and text.startswith("tether: "), text
    assert "Traceback" not in text
    return text


def test_usage_error_exits_2(tmp_path: Path) -> None:
    done = tether("serve", "--plaintext", "--host", "0.0.0.0", "-p", "0", home=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == ("tether: --plaintext is only allowed on a loopback "
                                     "address, not 0.0.0.0\n")


@pytest.mark.parametrize("path", PATHS)
def test_click_usage_error_exits_2_on_both_paths(tmp_path: Path, path: str) -> None:
    done = tether("run", "--no-such-option", "h", "true", home=tmp_path, **PATHS[path])
    assert done.returncode == 2 and b"No such option" in done.stderr


@pytest.mark.parametrize("args", [
    ["serve", "-p", "0", "--classic-host", "127.0.0.1"],  # a setting without the one it needs
    ["run", "web1", "--", "true"],  # a damaged hosts.toml
    ["hosts"],
])
def test_configuration_error_exits_1(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "hosts.toml").write_text("[hosts.web1\naddress = \n")
    done = tether(*args, home=tmp_path)
    assert done.returncode == 1, done.stderr
    one_line(done.stderr)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on loopback that accepts connections and never says anything."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("path", PATHS)
def test_ctrl_c_exits_130(tmp_path: Path, silent_server: int, path: str) -> None:
    """Interrupted while waiting for the server's welcome: 130, nothing else said."""
    proc = subprocess.Popen(
        [*TETHER, "run", "--plaintext", "-p", str(silent_server), "127.0.0.1", "--", "true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=cli_env(tmp_path, **PATHS[path]))
    try:
        time.sleep(1.5 if path == "fast" else 3.0)  # connected, waiting (asyncio starts later)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == b"" and b"Traceback" not in err and err.strip() == b""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["id"]])
def test_closed_stdout_exits_141(tmp_path: Path, args: list[str]) -> None:
    assert tether("keygen", "--name", "t", home=tmp_path).returncode == 0
    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write fails with EPIPE
    try:
        done = tether(*args, home=tmp_path, stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 141
    assert done.stderr == b""


def bug_injected(tmp_path: Path, target: str) -> Path:
    """A sitecustomize making ``target`` (module:function) raise a ZeroDivisionError: a bug,
    as far as the CLI can tell."""
    site = tmp_path / "site"
    site.mkdir()
    module, function = target.split(":")
    (site / "sitecustomize.py").write_text(
        f"import {module}\n"
        f"def _bug(*args, **kwargs):\n"
        f"    return 1 // 0\n"
        f"{module}.{function} = _bug\n")
    return site


@pytest.mark.parametrize("path, target", [
    ("fast", "tether.client.blocking:connect"),
    ("full", "tether.client.api:_open"),
])
def test_a_bug_is_an_internal_error_exiting_1(tmp_path: Path, path: str, target: str) -> None:
    site = bug_injected(tmp_path, target)
    env = {**PATHS[path], "PYTHONPATH": str(site)}
    done = tether("run", "--plaintext", "-p", "9", "127.0.0.1", "--", "true", home=tmp_path,
                  **env)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("tether: internal error: ZeroDivisionError: ")
    assert "--debug" in line


def test_debug_shows_the_traceback_of_a_bug(tmp_path: Path) -> None:
    site = bug_injected(tmp_path, "tether.client.api:_open")
    done = tether("--debug", "run", "--plaintext", "-p", "9", "127.0.0.1", "--", "true",
                  home=tmp_path, PYTHONPATH=str(site))
    assert done.returncode == 1
    assert b"Traceback" in done.stderr and b"ZeroDivisionError" in done.stderr


def test_policy_table_orders_subclasses_first() -> None:
    """Every class in the table comes before any class it derives from (else it is dead)."""
    from tether.cli.policy import EXIT_STATUSES

    classes = [cls for cls, _ in EXIT_STATUSES]
    for i, cls in enumerate(classes):
        assert not any(issubclass(cls, earlier) for earlier in classes[:i]), cls


