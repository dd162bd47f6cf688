"""``tether shell`` with stdin a pipe: line mode, one persistent remote shell, one command per
line, each with its own status."""

from __future__ import annotations

import re

from support import ServeProcess

from .conftest import Identities
from .helpers import line_shell


def test_cd_and_variables_persist_and_failures_are_reported(server: ServeProcess,
                                                            ids: Identities) -> None:
    done = line_shell(server.port, ids.client_home,
                      b"cd /tmp\npwd\nX=5\necho $X\nfalse\necho ok\n")
    assert done.stdout == b"/tmp\n5\nok\n"
    reports = done.stderr.decode().splitlines()
    assert reports == ["tether: line 5: 'false' exited with status 1"], done.stderr
    assert done.returncode == 0


def test_each_status_is_reported_with_its_line_number(server: ServeProcess,
                                                       ids: Identities) -> None:
    script = b"true\n\nsh -c 'exit 42'\necho fine\n( exit 7 )\nnosuchcommand-xyz\n:\n"
    done = line_shell(server.port, ids.client_home, script)
    assert done.stdout == b"fine\n"
    reports = [line for line in done.stderr.decode().splitlines()
               if line.startswith("tether: line")]
    assert [re.sub(r" (['\"]).*\1 ", " ", r) for r in reports] == [
        "tether: line 3: exited with status 42",
        "tether: line 5: exited with status 7",
        "tether: line 6: exited with status 127",
    ], done.stderr
    assert b"nosuchcommand-xyz" in done.stderr  # bash's own message, on stderr
    assert done.returncode == 0


def test_exit_as_a_line_is_the_exit_status(server: ServeProcess, ids: Identities) -> None:
    done = line_shell(server.port, ids.client_home, b"echo before\nexit 3\necho never\n")
    assert done.stdout == b"before\n"
    assert done.returncode == 3
    assert b"never" not in done.stdout + done.stderr


def test_status_of_the_last_line_is_the_exit_status(server: ServeProcess,
                                                     ids: Identities) -> None:
    """As with ``bash < script`` or ``ssh host < script``: the last command's status."""
    done = line_shell(server.port, ids.client_home, b"echo a\nfalse\n")
    assert done.stdout == b"a\n"
    assert done.returncode == 1
    done = line_shell(server.port, ids.client_home, b"false\ntrue\n")
    assert done.returncode == 0


def test_stdout_and_stderr_are_kept_apart(server: ServeProcess, ids: Identities) -> None:
    done = line_shell(server.port, ids.client_home,
                      b"echo out1; echo err1 >&2; echo out2\necho err2 >&2\n")
    assert done.stdout == b"out1\nout2\n"
    assert done.stderr == b"err1\nerr2\n"
    assert done.returncode == 0


def test_a_command_reading_stdin_gets_eof(server: ServeProcess, ids: Identities) -> None:
    """``cat`` must not eat the following lines of the script."""
    done = line_shell(server.port, ids.client_home,
                      b"cat\nread -r v || echo eof\necho after $v\nhead -c 5\n")
    assert done.stdout == b"eof\nafter\n"
    assert done.returncode == 0


def test_last_line_without_newline_and_no_trailing_newline_output(
        server: ServeProcess, ids: Identities) -> None:
    done = line_shell(server.port, ids.client_home, b"printf x\nprintf y\necho z\necho last")
    assert done.stdout == b"xyz\nlast\n"
    assert done.returncode == 0


def test_quotes_and_special_characters_in_lines(server: ServeProcess, ids: Identities) -> None:
    script = (b"echo 'single' \"double\" $((1+2))\n"
              b"printf '%s\\n' \"it's\" 'a\\b'\n"
              b"A='x  y'; echo \"[$A]\"\n"
              b"echo 'unterminated\n"
              b"echo still here\n")
    done = line_shell(server.port, ids.client_home, script)
    assert done.stdout == b"single double 3\nit's\na\\b\n[x  y]\nstill here\n"
    assert b"line 4" in done.stderr  # a syntax error is that line's failure only


def test_refused_without_shell_permission(server: ServeProcess, ids: Identities) -> None:
    done = line_shell(server.port, ids.exec_home, b"echo hi\n")
    assert done.returncode == 1
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tether:") and "shell" in lines[0], lines


def test_a_command_needs_a_terminal(server: ServeProcess, ids: Identities) -> None:
    done = line_shell(server.port, ids.client_home, b"", "--", "tty")
    assert done.returncode != 0
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and "terminal" in lines[0], lines


def test_a_background_job_does_not_hold_the_session(server: ServeProcess,
                                                    ids: Identities) -> None:
    done = line_shell(server.port, ids.client_home,
                      b"sleep 100 & echo started\necho $((1 + 1))\n", timeout=30)
    assert done.stdout == b"started\n2\n"
    assert done.returncode == 0
