"""Commands on a Windows server (tether serve under Wine, a Chinese locale), driven by the Linux
client: cmd.exe's output in GBK shown right on a terminal and passed unchanged into a pipe, argv
quoting, exit codes (large and negative ones), stdin, and a timeout killing the whole tree
(the shell's line mode: test_windows_shell.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import uuid

import pexpect
import psutil
import pytest

import tether
from support import TETHER, wait_until

from .winserver import CHINESE_DIR, HOST, WinServer, linux_env

# Wine starts slowly on a loaded machine: the module's first test also waits for the server
pytestmark = pytest.mark.timeout(400)

GBK_HANYU = "汉语".encode("gbk")  # b"\xba\xba\xd3\xef"


async def test_the_server_says_windows_and_its_console_code_page(server: WinServer) -> None:
    async with tether.connect(HOST, server.port, home=server.client_home, timeout=60) as conn:
        assert conn.server.platform == "windows"
        assert conn.server.encoding == "cp936"
        result = await conn.run("echo 汉语")
    assert result.stdout == GBK_HANYU + b"\r\n"
    assert result.text.strip() == "汉语"


def test_echo_chinese_into_a_pipe_is_gbk_bytes(server: WinServer) -> None:
    done = server.run("echo 汉语")
    assert done.returncode == 0, done.stderr
    assert done.stdout == GBK_HANYU + b"\r\n"


def test_echo_chinese_on_a_terminal_is_shown_right(server: WinServer) -> None:
    child = pexpect.spawn(
        TETHER[0], [*TETHER[1:], "run", "-p", str(server.port), HOST, "--", "echo 汉语"],
        env=linux_env(server.client_home), timeout=90,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert "汉语".encode() in child.before, child.before
    assert GBK_HANYU not in child.before
    assert child.exitstatus == 0


def test_dir_of_a_directory_with_chinese_names(server: WinServer) -> None:
    done = server.run(f"dir /b {CHINESE_DIR}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("gbk").split() == ["文件.txt"]
    done = server.run("dir /b")
    assert CHINESE_DIR in done.stdout.decode("gbk").split()


def test_type_of_a_gbk_file_is_its_bytes(server: WinServer) -> None:
    done = server.run(f"type {CHINESE_DIR}\\文件.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "内容\r\n".encode("gbk")


def test_several_words_are_an_argv_quoted_for_createprocess(server: WinServer) -> None:
    done = server.run("python.exe", "-c", "import sys; print(sys.argv[1:])",
                      "a b", 'c"d', "", "e\\", "\\\\f g\\")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"""['a b', 'c"d', '', 'e\\\\', '\\\\\\\\f g\\\\']"""


@pytest.mark.parametrize(("command", "status"), [
    ("exit 0", 0), ("exit 3", 3), ("exit 255", 255),
])
def test_small_exit_codes(server: WinServer, command: str, status: int) -> None:
    assert server.run(command).returncode == status


def test_a_large_exit_code_is_reported_whole(server: WinServer) -> None:
    # 0xC0000005 (an access violation's code; cmd's exit takes it as a signed number): the
    # CLI exits with its low byte and says the whole code
    done = server.run("exit -1073741819")
    assert done.returncode == 5
    assert b"3221225477" in done.stderr and b"0xC0000005" in done.stderr


def test_a_negative_exit_code_is_its_unsigned_32_bit_value(server: WinServer) -> None:
    done = server.run("exit -1")
    assert done.returncode == 255
    assert b"4294967295" in done.stderr and b"0xFFFFFFFF" in done.stderr


def test_an_exit_code_whose_low_byte_is_zero_is_still_a_failure(server: WinServer) -> None:
    done = server.run("exit 256")
    assert done.returncode == 1
    assert b"256" in done.stderr


def test_stdin_is_forwarded_and_closed(server: WinServer) -> None:
    data = b"".join(b"line %d\r\n" % i for i in range(2000))
    done = server.run("python.exe", "-c",
                      "import sys, hashlib; b = sys.stdin.buffer.read(); "
                      "print(len(b), hashlib.sha256(b).hexdigest())", input=data)
    assert done.returncode == 0, done.stderr
    import hashlib
    assert done.stdout.split() == [str(len(data)).encode(),
                                   hashlib.sha256(data).hexdigest().encode()]


def test_a_windows_program_reads_stdin_to_its_end(server: WinServer) -> None:
    # more.com copies its input and ends at its end: it would hang if stdin were not closed
    # (Wine's findstr and find are stubs that print nothing)
    done = server.run("more", input=b"ax\r\nb\r\ncx\r\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"ax\r\nb\r\ncx\r\n"


def test_stderr_is_its_own_stream(server: WinServer) -> None:
    done = server.run("echo out& echo err 1>&2")
    assert done.stdout.strip() == b"out"
    assert done.stderr.strip() == b"err"


# A child that starts a grandchild and both sleep. The grandchild's command line carries
# GRANDCHILD-<token>, spelt in two parts here so that only the grandchild's own carries it whole.
TREE = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(120)  # ' + 'GRAND' + 'CHILD-{token}']); time.sleep(120)")


def _grandchildren(token: str) -> list[psutil.Process]:
    """The Linux processes Wine runs the grandchild as (Wine's tasklist is a stub)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(f"GRANDCHILD-{token}" in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
    return found


def _start_tree(server: WinServer, *opts: str) -> tuple[subprocess.Popen[bytes], str]:
    token = uuid.uuid4().hex[:12]
    client = subprocess.Popen(
        [*TETHER, "run", *opts, "-p", str(server.port), HOST, "--", "python.exe", "-c",
         TREE.format(token=token)],
        env=linux_env(server.client_home), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_until(lambda: bool(_grandchildren(token)), 60), "the grandchild never started"
    return client, token


def _tree_gone(token: str) -> bool:
    return wait_until(lambda: not _grandchildren(token), 30)


def test_a_timeout_kills_the_whole_process_tree(server: WinServer) -> None:
    client, token = _start_tree(server, "--timeout", "6")
    _, err = client.communicate(timeout=90)
    assert client.returncode == 124, err
    assert _tree_gone(token), "the grandchild survived the timeout"


def test_a_disconnect_kills_the_whole_process_tree(server: WinServer) -> None:
    client, token = _start_tree(server)
    client.kill()  # the client vanishes: its connection closes under the server
    client.communicate(timeout=30)
    assert _tree_gone(token), "the grandchild survived its client's disconnect"
    server.checked()


def test_a_forwarded_term_kills_the_tree_and_reports_the_signal(server: WinServer) -> None:
    client, token = _start_tree(server)
    client.send_signal(signal.SIGTERM)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 128 + signal.SIGTERM, err
    assert _tree_gone(token), "the grandchild survived a forwarded TERM"



async def test_an_abandoned_stream_kills_the_whole_process_tree(server: WinServer) -> None:
    """The client closes the stream and stays connected: the tree dies, the connection serves on."""
    token = uuid.uuid4().hex[:12]
    async with tether.connect(HOST, server.port, home=server.client_home, timeout=60) as conn:
        async with conn.stream(["python.exe", "-c", TREE.format(token=token)]):
            started = await asyncio.to_thread(wait_until, lambda: bool(_grandchildren(token)), 60)
            assert started, "the grandchild never started"
        assert await asyncio.to_thread(_tree_gone, token), "the grandchild survived the abandon"
        assert (await conn.run("echo still here")).stdout == b"still here\r\n"
