"""The environment commands run with (issue 14, item 12): a login-like one built by the server
(HOME, USER, LOGNAME, SHELL, a default PATH, the locale), then the client's ``--env``; the
server's own variables only when ``serve --pass-env`` names them; /bin/sh for commands when the
account's shell is ``nologin`` or ``false``."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tether
from tether.server.environment import default_path, login_environment

if TYPE_CHECKING:
    from conftest import Client, ServerFactory

HOST = "127.0.0.1"

ACCOUNT = pwd.getpwuid(os.getuid())
VENV_BIN = str(Path(sys.executable).parent)


def _server_env(**extra: str) -> dict[str, str]:
    """A server environment holding a secret, a venv's PATH and KEEP_ME."""
    return {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "TETHER_TEST_SECRET": "s3cret",
            "KEEP_ME": "kept", **extra}


@pytest.fixture
def env_client(client: Client, make_server: ServerFactory) -> Client:
    """A client of a server whose own environment holds a secret, a venv's PATH and KEEP_ME,
    started with ``--pass-env KEEP_ME``."""
    return client.other(server=make_server("--pass-env", "KEEP_ME", env=_server_env()))


def _parse(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)


def _check_login_env(env: dict[str, str]) -> None:
    assert env["HOME"] == ACCOUNT.pw_dir
    assert env["USER"] == env["LOGNAME"] == ACCOUNT.pw_name
    assert env["SHELL"] == (ACCOUNT.pw_shell or "/bin/sh")
    assert env["PATH"] == default_path(), "the server's venv PATH leaked into the command"
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"
    assert "TETHER_TEST_SECRET" not in env
    assert "TETHER_HOME" not in env
    assert env["KEEP_ME"] == "kept"


def test_cli_command_gets_a_login_environment(env_client: Client) -> None:
    done = env_client.run("env", opts=["--env", "FROM_CLIENT=yes"])
    assert done.returncode == 0, done.stderr
    env = _parse(done.stdout)
    _check_login_env(env)
    assert env["FROM_CLIENT"] == "yes"
    assert "TERM" not in env, "a command without a terminal has no TERM"


def test_cli_shell_command_and_client_env_override(env_client: Client) -> None:
    done = env_client.run("echo $USER:$LOGNAME:$PATH; which tether || echo none",
                          opts=["--env", "PATH=/opt/x:/usr/bin:/bin"])
    assert done.returncode == 0, done.stderr
    name = ACCOUNT.pw_name
    assert done.stdout == f"{name}:{name}:/opt/x:/usr/bin:/bin\nnone\n".encode()


async def test_api_command_gets_a_login_environment(env_client: Client) -> None:
    async with tether.connect(HOST, env_client.port, home=env_client.home) as conn:
        result = await conn.run(["env"], env={"FROM_API": "1"})
    env = _parse(result.stdout)
    _check_login_env(env)
    assert env["FROM_API"] == "1"


async def test_terminal_shell_gets_term_and_login_environment(env_client: Client) -> None:
    async with tether.connect(HOST, env_client.port, home=env_client.home) as conn:
        proc = await conn.shell(["env"], term="vt100")
        out = b"".join([data async for _, data in proc])
        await asyncio.wait_for(proc.wait(), 30)
    env = _parse(out.replace(b"\r\n", b"\n"))
    _check_login_env(env)
    assert env["TERM"] == "vt100"


def test_login_environment_unit() -> None:
    server = {"PATH": "/venv/bin", "LANG": "de_DE.UTF-8", "LC_TIME": "C", "TZ": "UTC",
              "SECRET": "x", "KEEP": "k"}
    env = login_environment(("KEEP", "ABSENT"), {"LANG": "C"}, term="xterm",
                            server_env=server)
    assert env["PATH"] == default_path()
    assert env["LC_TIME"] == "C" and env["TZ"] == "UTC" and env["KEEP"] == "k"
    assert env["LANG"] == "C", "--env comes last"
    assert env["TERM"] == "xterm"
    assert "SECRET" not in env and "ABSENT" not in env


NOLOGIN_SITE = """\
import pwd
_real = pwd.getpwuid
def _nologin(uid):
    e = _real(uid)
    return pwd.struct_passwd((e.pw_name, e.pw_passwd, e.pw_uid, e.pw_gid, e.pw_gecos,
                              e.pw_dir, {shell!r}))
pwd.getpwuid = _nologin
"""


@pytest.mark.parametrize("shell", ["/usr/sbin/nologin", "/bin/false"])
def test_nologin_account_runs_commands_with_bin_sh(tmp_path: Path, client: Client,
                                                   make_server: ServerFactory,
                                                   shell: str) -> None:
    """The server's account has ``nologin`` (or ``false``) as its shell (the password database
    says so through a sitecustomize in the server process): one-string commands still run,
    with /bin/sh."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NOLOGIN_SITE.format(shell=shell))
    server = make_server(env=_server_env(PYTHONPATH=str(site)))
    done = client.other(server=server).run("echo $0 $SHELL; echo works")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"/bin/sh /bin/sh\nworks\n"
