"""``tether shell`` against a Windows server (tether serve under Wine, a Chinese locale): no
pseudo-terminal (``no_pty``), so the client goes on in line mode, which is one persistent cmd.exe
fed a line at a time (server/winshell.py): ``cd`` and ``set`` persist, every line's status is its
own, output is GBK bytes into a pipe and Chinese on a terminal, a line reading stdin gets end of
file, ``exit N`` ends the shell with N."""

from __future__ import annotations

import pexpect
import pytest

from support import TETHER

from .winserver import CHINESE_DIR, HOST, WinServer, linux_env, tether

# Wine starts slowly on a loaded machine: the module's first test also waits for the server
pytestmark = pytest.mark.timeout(400)

GBK = "gbk"


def _lines(server: WinServer, *lines: str, timeout: float = 120):  # type: ignore[no-untyped-def]
    """``tether shell -T`` with LINES on stdin, output into pipes."""
    script = "".join(f"{line}\n" for line in lines).encode()
    return tether("shell", "-T", "-p", str(server.port), HOST, home=server.client_home,
                  input=script, timeout=timeout)


def test_a_terminal_hears_no_pty_and_goes_on_in_line_mode(server: WinServer) -> None:
    child = pexpect.spawn(TETHER[0], [*TETHER[1:], "shell", "-p", str(server.port), HOST],
                          env=linux_env(server.client_home), timeout=90)
    child.expect("pseudo-terminal")
    child.expect("continuing in line mode")
    child.sendline("set NAME=汉语".encode())
    child.sendline(b"echo [%NAME%]")
    child.expect("[汉语]".encode())  # decoded from GBK for the terminal (not what was typed)
    child.sendline(f"cd {CHINESE_DIR}".encode())
    child.sendline(b"dir /b")
    child.expect("文件.txt".encode())
    child.sendline(b"exit 3")
    child.expect(pexpect.EOF)
    child.close()
    assert "汉语".encode("gbk") not in child.before
    assert child.exitstatus == 3


def test_cd_and_set_persist_and_output_is_gbk_bytes(server: WinServer) -> None:
    done = _lines(server, "set GREETING=你好", "echo %GREETING%", f"cd {CHINESE_DIR}",
                  "dir /b", "cd ..", "echo back")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == "你好\r\n文件.txt\r\nback\r\n".encode(GBK)
    assert done.stderr == b""


def test_every_line_reports_its_own_status(server: WinServer) -> None:
    done = _lines(server, "cmd /c exit 5", "echo fine", "cmd /c exit -1", "no-such-command",
                  "exit /b 7", "echo after")
    err = done.stderr.decode(errors="replace")
    assert "line 1: 'cmd /c exit 5' exited with status 5" in err
    assert "echo fine" not in err  # a builtin after a failure reports 0, not the old errorlevel
    assert "line 3: 'cmd /c exit -1' exited with status 4294967295" in err
    assert "line 4: 'no-such-command' exited with status 9009" in err
    assert "line 5: 'exit /b 7' exited with status 7" in err  # ends that line only
    assert done.stdout == b"fine\r\nafter\r\n"
    assert done.returncode == 0, err  # the last line's status


def test_at_the_end_of_input_the_shell_exits_with_the_last_status(server: WinServer) -> None:
    done = _lines(server, "echo one", "cmd /c exit 4")
    assert done.stdout == b"one\r\n"
    assert done.returncode == 4


def test_exit_ends_the_shell_and_the_lines_after_it_never_run(server: WinServer) -> None:
    done = _lines(server, "echo one", "exit 6", "echo never")
    assert done.stdout == b"one\r\n"
    assert done.returncode == 6


def test_a_line_reading_stdin_gets_end_of_file_not_the_next_line(server: WinServer) -> None:
    done = _lines(server, "set /p ANSWER=", "echo next", "echo [%ANSWER%]")
    assert done.stdout == b"next\r\n[]\r\n", done.stderr


def test_many_lines_at_once_run_in_order(server: WinServer) -> None:
    """All of them in one write from the client: the server hands cmd.exe one at a time."""
    done = _lines(server, *(f"echo {n}" for n in range(40)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(b"%d\r\n" % n for n in range(40))


def test_stderr_stays_on_stderr(server: WinServer) -> None:
    done = _lines(server, "echo 错误 1>&2", "echo out")
    assert done.stdout == b"out\r\n"
    assert done.stderr == "错误 \r\n".encode(GBK)


def test_a_line_the_code_page_cannot_carry_fails_alone(server: WinServer) -> None:
    done = _lines(server, "echo \U0001f600", "echo still here")
    err = done.stderr.decode(errors="replace")
    assert "the line has characters the server's code page (cp936) cannot carry" in err
    assert "line 1:" in err and "exited with status 1" in err
    assert done.stdout == b"still here\r\n"
    assert done.returncode == 0


def test_a_goto_to_a_missing_label_fails_alone(server: WinServer) -> None:
    """cmd.exe's message on stderr and the shell goes on (Windows' cmd.exe says status 1,
    Wine's 0: the status is not asserted)."""
    done = _lines(server, "goto nowhere", "echo still here")
    assert done.stdout == b"still here\r\n", done.stderr
    assert "GOTO" in done.stderr.decode(GBK)


def test_a_line_too_long_for_cmd_fails_alone(server: WinServer) -> None:
    done = _lines(server, "echo " + "x" * 9000, "echo still here")
    assert done.stdout == b"still here\r\n", done.stderr
    err = done.stderr.decode(errors="replace")
    assert "the line is longer than cmd.exe's 8191 characters" in err
    assert "line 1:" in err and "exited with status 1" in err
