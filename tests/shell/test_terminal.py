"""``tether shell`` driven through a real pseudo-terminal (pexpect): what a user at a keyboard
sees. Each test also checks that the local terminal settings (``stty -g`` in the same terminal)
are the same after the client as before it."""

from __future__ import annotations

import re
import secrets
import signal
import time
from collections.abc import Callable

import psutil
import pytest

from support import ServeProcess, wait_until

from .conftest import Identities, TerminalFactory
from .helpers import PROMPT, SETTLE, find_processes, yes_running


def unique_sleep() -> list[str]:
    """A ``sleep`` command line no other process on the machine has."""
    return ["sleep", f"100.{secrets.randbelow(10**6):06d}"]


def test_cd_and_variables_persist_and_exit_status(terminal: TerminalFactory,
                                                  server: ServeProcess) -> None:
    t = terminal()
    t.prompt()
    assert t.run("pwd") == f"{server.root}\n"  # a shell starts in the server's root
    t.run("cd /tmp")
    assert t.run("pwd") == "/tmp\n"
    t.run("X=5")
    assert t.run("echo $X") == "5\n"
    assert t.run("echo $TERM") == "xterm-256color\n"
    assert re.fullmatch(r"/dev/pts/\d+\n", t.run("tty"))
    t.type("exit 3")
    done = t.finish()
    assert done.status == 3
    assert done.after == done.before


def test_stty_size_follows_resize(terminal: TerminalFactory) -> None:
    t = terminal(rows=24, cols=160)
    t.prompt()
    assert t.run("stty size") == "24 160\n"
    for rows, cols in ((40, 120), (30, 100)):
        t.child.setwinsize(rows, cols)  # the client gets SIGWINCH, as from a window manager
        seen: list[str] = []

        def resized(want: str = f"{rows} {cols}\n", seen: list[str] = seen) -> bool:
            seen.append(t.run("stty size"))
            return seen[-1] == want

        assert wait_until(resized, SETTLE, interval=0.2), seen
    t.key("d")
    done = t.finish()
    assert done.status == 0
    assert done.after == done.before


def test_ctrl_c_interrupts_without_ending_and_ctrl_d_ends(terminal: TerminalFactory) -> None:
    t = terminal()
    t.prompt()
    sleep = unique_sleep()
    t.type(" ".join(sleep))
    assert wait_until(lambda: bool(find_processes(sleep)), SETTLE), "sleep did not start"
    started = time.monotonic()
    t.key("c")
    t.prompt()
    assert time.monotonic() - started < SETTLE
    assert wait_until(lambda: not find_processes(sleep), SETTLE), "Ctrl-C did not stop sleep"
    assert t.run("echo status=$?") == "status=130\n"
    assert t.run("echo $((40 + 2))") == "42\n"  # the session goes on
    t.key("d")  # Ctrl-D at the prompt ends the shell
    done = t.finish()
    assert done.status == 0
    assert done.after == done.before


def test_ctrl_z_stops_a_job(terminal: TerminalFactory) -> None:
    t = terminal()
    t.prompt()
    sleep = unique_sleep()
    t.type(" ".join(sleep))
    assert wait_until(lambda: bool(find_processes(sleep)), SETTLE), "sleep did not start"
    t.key("z")
    shown = t.prompt()
    assert "Stopped" in shown
    (proc,) = find_processes(sleep)
    assert wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, SETTLE)
    jobs = t.run("jobs")
    assert "Stopped" in jobs and " ".join(sleep) in jobs
    t.run("kill %1; wait %1")  # wait: bash reaps the job now, not when it gets to it
    assert wait_until(lambda: not find_processes(sleep), SETTLE)
    assert "Stopped" not in t.run("jobs")  # this one may carry bash's one-time "Terminated"
    assert "sleep" not in t.run("jobs")
    t.type("exit")
    done = t.finish()
    assert done.status == 0
    assert done.after == done.before


def test_flood_of_output_does_not_stall_ctrl_c(terminal: TerminalFactory,
                                               server: ServeProcess) -> None:
    """While the terminal is not read at all, Ctrl-C still reaches the remote ``yes``."""
    t = terminal()
    t.prompt()
    t.type("yes")
    t.child.expect_exact("y\r\ny\r\n")
    assert yes_running(server)
    time.sleep(1.0)  # the terminal is not read meanwhile: output backs up everywhere
    t.key("c")
    assert wait_until(lambda: not yes_running(server), SETTLE), "Ctrl-C did not stop yes"
    t.child.send("echo mark''er\r")
    t.child.expect_exact("\r\nmarker\r\n", timeout=60)
    t.prompt()
    t.type("exit 4")
    done = t.finish()
    assert done.status == 4
    assert done.after == done.before


def test_one_command_in_a_terminal(terminal: TerminalFactory) -> None:
    t = terminal("--", 'tty; echo "term=$TERM"; stty size; exit 7', term="vt220", rows=33,
                 cols=99)
    done = t.finish()
    assert done.status == 7
    assert re.search(r"^/dev/pts/\d+$", done.tail, re.M), done.tail
    assert "term=vt220\n" in done.tail
    assert "33 99\n" in done.tail
    assert PROMPT not in done.tail  # no login shell, just the command
    assert done.after == done.before


def test_argv_command_in_a_terminal(terminal: TerminalFactory) -> None:
    t = terminal("--", "sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty; exit 5")
    done = t.finish()
    assert done.status == 5
    assert "on-a-tty\n" in done.tail
    assert done.after == done.before


def test_dropped_connection_restores_terminal(terminal: TerminalFactory,
                                              own_server: Callable[[], ServeProcess]) -> None:
    server = own_server()
    t = terminal(port=server.port)
    t.prompt()
    assert t.run("echo $((6 * 7))") == "42\n"
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    done = t.finish()
    assert done.status == 255
    assert done.after == done.before
    errors = [line for line in done.tail.splitlines() if line.startswith("tether:")]
    assert len(errors) == 1, done.tail
    assert "Traceback" not in done.tail


def test_refused_without_shell_permission(terminal: TerminalFactory, ids: Identities) -> None:
    t = terminal(home=ids.exec_home)
    done = t.finish()
    assert done.status != 0
    errors = [line for line in done.tail.splitlines() if line.startswith("tether:")]
    assert len(errors) == 1 and "shell" in errors[0], done.tail
    assert "Traceback" not in done.tail
    assert done.after == done.before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_client_restores_terminal(terminal: TerminalFactory,
                                                sig: signal.Signals) -> None:
    t = terminal()
    t.prompt()
    assert t.run("echo $((6 * 7))") == "42\n"
    (client,) = [p for p in psutil.Process(t.child.pid).children() if "shell" in p.cmdline()]
    client.send_signal(sig)
    done = t.finish()
    assert done.status == 255
    assert done.after == done.before
    assert "Traceback" not in done.tail


def test_line_mode_forced_on_a_terminal(terminal: TerminalFactory) -> None:
    """``-T``: line mode even on a terminal; the terminal is never made raw."""
    t = terminal(opts=["-T"])
    for line in ("cd /tmp", "pwd", "false", "echo $((2 * 21))"):
        t.child.send(line + "\r")
    t.child.expect_exact("\r\n/tmp\r\n")
    t.child.expect_exact("line 3: 'false' exited with status 1")
    t.child.expect_exact("\r\n42\r\n")
    t.key("d")  # end of input, read by the local terminal
    done = t.finish()
    assert done.status == 0
    assert done.after == done.before
