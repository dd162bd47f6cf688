"""The classic tutorial's own clients (tests/classic/classic_clients.py: a plain socket, struct and
json) against the Windows server, the tutorial's own machine: cmd.exe's answer in GBK, as the
tutorial's client decoded it by hand; uploads and downloads byte-identical; names refused."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from classic import classic_clients as classic
from support import wait_until

from .winserver import CHINESE_DIR, WinServer

# Wine starts slowly on a loaded machine: the module's first test also waits for the server
pytestmark = pytest.mark.timeout(400)


def _stored(server: WinServer, name: str, size: int) -> bytes:
    path = server.root / name
    assert wait_until(lambda: path.exists() and path.stat().st_size == size, 30), (
        f"{name} not stored\n{server.log_text()[-2000:]}")
    return path.read_bytes()


def test_command_output_is_gbk_as_the_tutorial_decoded_it(server: WinServer) -> None:
    with classic.connect(server.classic_port) as sock:
        reply = classic.command(sock, "echo 汉语")
    assert reply == "汉语\r\n".encode("gbk")
    assert reply.decode("gbk").strip() == "汉语"


def test_dir_of_chinese_names(server: WinServer) -> None:
    with classic.connect(server.classic_port) as sock:
        reply = classic.command(sock, f"dir /b {CHINESE_DIR}")
    assert reply.decode("gbk").split() == ["文件.txt"]


def test_stderr_only_output_is_the_reply_in_gbk(server: WinServer) -> None:
    """As the tutorial's server answered: stdout if there is any, else stderr, as cmd.exe wrote
    it (the console code page)."""
    with classic.connect(server.classic_port) as sock:
        reply = classic.command(sock, "echo 错误 1>&2")
    assert reply == "错误 \r\n".encode("gbk")


def test_no_output_gets_a_note_with_the_exit_status(server: WinServer) -> None:
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "exit 3") == b"tether: no output (exit status 3)\n"
        assert classic.command(sock, "echo still here") == b"still here\r\n"


def test_upload_and_download_byte_identical(server: WinServer, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    data = bytes(range(256)) * 64 + os.urandom(2 * 1024 * 1024 + 5)
    src.write_bytes(data)
    with classic.connect(server.classic_port) as sock:
        classic.upload(sock, src)
    assert _stored(server, "blob.bin", len(data)) == data
    with classic.connect(server.classic_port) as sock:
        header, body = classic.download(sock, "blob.bin")
    assert header["filesize"] == len(data)
    assert body == data


def test_an_upload_under_a_device_name_is_refused(server: WinServer, tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(b"to a device\n")
    before = sorted(p.name for p in server.root.iterdir())
    with classic.connect(server.classic_port) as sock:
        classic.upload(sock, src, filename="CON")
        # as any refused upload: the connection is closed (the protocol has no reply)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert wait_until(lambda: "upload refused" in server.log_text(), 10)
    assert "CON is a device name" in server.log_text()
    assert sorted(p.name for p in server.root.iterdir()) == before


def test_a_chinese_file_name_round_trips(server: WinServer, tmp_path: Path) -> None:
    src = tmp_path / "报告.txt"
    data = "第一行\r\n".encode("gbk") + os.urandom(1000)
    src.write_bytes(data)
    with classic.connect(server.classic_port) as sock:
        classic.upload(sock, src)
    assert _stored(server, "报告.txt", len(data)) == data
    with classic.connect(server.classic_port) as sock:
        assert classic.command(sock, "dir /b 报告.txt").decode("gbk").split() == ["报告.txt"]
    with classic.connect(server.classic_port) as sock:
        header, body = classic.download(sock, "报告.txt")
    assert (header["filename"], body) == ("报告.txt", data)
