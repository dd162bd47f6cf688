"""Files on a Windows server (tether serve under Wine), moved by the Linux client: put, get and -r
round trips byte-identical (Chinese names, many small files, a large one), replacing a file,
and the names Windows would store somewhere else refused with their reason: device names,
trailing dots and spaces, drive letters and streams, backslashes, case-insensitive collisions,
and links leading out of the root."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import tether

from .winserver import HOST, WinServer

# Wine starts slowly on a loaded machine: the module's first test also waits for the server
pytestmark = pytest.mark.timeout(400)


def _tree_digest(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(top.rglob("*"))}


def _put(server: WinServer, *args: str, confined: bool = False) -> tuple[int, bytes]:
    done = server.cli("put", "-p", str(server.port), *args, confined=confined)
    return done.returncode, done.stderr


def _get(server: WinServer, *args: str, confined: bool = False) -> tuple[int, bytes]:
    done = server.cli("get", "-p", str(server.port), *args, confined=confined)
    return done.returncode, done.stderr


def test_put_and_get_a_file_byte_identical(server: WinServer, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    code, err = _put(server, str(src), f"{HOST}:big.bin")
    assert code == 0, err
    assert (server.root / "big.bin").read_bytes() == data
    back = tmp_path / "back"
    back.mkdir()
    code, err = _get(server, f"{HOST}:big.bin", str(back))
    assert code == 0, err
    assert (back / "big.bin").read_bytes() == data


def test_a_tree_round_trips_with_chinese_names(server: WinServer, tmp_path: Path) -> None:
    tree = tmp_path / "树"
    (tree / "子目录" / "深").mkdir(parents=True)
    (tree / "空目录").mkdir()
    (tree / "说明.txt").write_bytes("你好，世界\r\n".encode("gbk"))
    (tree / "子目录" / "数据.bin").write_bytes(os.urandom(700_000))
    (tree / "子目录" / "深" / "empty").write_bytes(b"")
    for i in range(60):  # small files: the batched path
        (tree / "子目录" / f"小{i}.txt").write_bytes(os.urandom(i * 37))
    (server.root / "上传").mkdir()
    code, err = _put(server, "-r", str(tree), f"{HOST}:上传/")
    assert code == 0, err
    assert _tree_digest(server.root / "上传" / "树") == _tree_digest(tree)
    back = tmp_path / "back"
    back.mkdir()
    code, err = _get(server, "-r", f"{HOST}:上传/树", str(back))
    assert code == 0, err
    assert _tree_digest(back / "树") == _tree_digest(tree)


def test_force_replaces_a_file_atomically(server: WinServer, tmp_path: Path) -> None:
    (server.root / "replace.txt").write_bytes(b"old")
    src = tmp_path / "replace.txt"
    src.write_bytes(b"new contents")
    code, err = _put(server, str(src), f"{HOST}:replace.txt")
    assert code != 0 and b"exists" in err, err
    code, err = _put(server, "--force", str(src), f"{HOST}:replace.txt")
    assert code == 0, err
    assert (server.root / "replace.txt").read_bytes() == b"new contents"
    assert not [p for p in server.root.iterdir() if p.name.startswith(".replace.txt")]


@pytest.mark.parametrize(("remote", "reason"), [
    ("CON", b"device name"),
    ("nul.txt", b"device name"),
    ("COM1", b"device name"),
    ("lpt9.log", b"device name"),
    ("trailing.", b"trailing dot or space"),
    ("trailing ", b"trailing dot or space"),
    ("C:/Windows/x.txt", b"drive or an alternate data stream"),
    ("file.txt:stream", b"drive or an alternate data stream"),
    ("back\\slash.txt", b"separates directories"),
    ("what?.txt", b"not allowed"),
    ("../outside.txt", b"leaves this client's root"),
])
def test_names_windows_would_misplace_are_refused(server: WinServer, tmp_path: Path,
                                                   remote: str, reason: bytes) -> None:
    src = tmp_path / "payload.txt"
    src.write_bytes(b"payload")
    top = server.root  # the confined client's root is server.root / "confined"
    before = sorted(str(p) for p in top.rglob("*"))
    code, err = _put(server, str(src), f"{HOST}:{remote}", confined=True)
    assert code != 0
    assert reason in err, err
    assert err.count(b"\n") == 1 and b"Traceback" not in err
    assert sorted(str(p) for p in top.rglob("*")) == before


def test_a_reserved_name_inside_a_tree_is_refused(server: WinServer, tmp_path: Path) -> None:
    tree = tmp_path / "devs"
    tree.mkdir()
    (tree / "aux.txt").write_bytes(b"x")
    code, err = _put(server, "-r", str(tree), f"{HOST}:")
    assert code != 0
    assert b"device name" in err, err


def test_get_of_a_device_name_is_refused(server: WinServer, tmp_path: Path) -> None:
    code, err = _get(server, f"{HOST}:NUL", str(tmp_path))
    assert code != 0 and b"device name" in err, err


def test_a_case_insensitive_collision_is_refused(server: WinServer, tmp_path: Path) -> None:
    (server.root / "README").write_bytes(b"original")
    src = tmp_path / "readme"
    src.write_bytes(b"other")
    code, err = _put(server, "--force", str(src), f"{HOST}:readme")
    assert code != 0
    assert b"case-insensitive" in err and b"README" in err, err
    assert (server.root / "README").read_bytes() == b"original"
    assert not (server.root / "readme").exists()


def test_the_confined_client_stays_in_its_root(server: WinServer, tmp_path: Path) -> None:
    src = tmp_path / "inside.txt"
    src.write_bytes(b"inside")
    code, err = _put(server, str(src), f"{HOST}:inside.txt", confined=True)
    assert code == 0, err
    assert (server.confined_root / "inside.txt").read_bytes() == b"inside"
    code, err = _get(server, f"{HOST}:/Windows/win.ini", str(tmp_path), confined=True)
    assert code != 0 and b"outside this client's root" in err, err


def test_a_link_out_of_the_root_is_not_followed(server: WinServer, tmp_path: Path) -> None:
    """A symlink in a confined root that leads outside it. Wine shows a Unix symlink as the
    directory it points to (no reparse point), so what stops it is the final-path check: the
    handle's resolved path must lie under the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (server.confined_root / "escape").symlink_to(outside)
    code, err = _get(server, f"{HOST}:escape/secret.txt", str(tmp_path), confined=True)
    assert code != 0, "a file outside the root was served"
    assert not (tmp_path / "secret.txt").exists()
    assert b"link" in err, err
    src = tmp_path / "in.txt"
    src.write_bytes(b"in")
    code, err = _put(server, str(src), f"{HOST}:escape/in.txt", confined=True)
    assert code != 0, "a file was stored outside the root"
    assert not (outside / "in.txt").exists()


@pytest.mark.parametrize("cwd", ["..\\..", "sub\\..\\..", "C:\\", "Z:/tmp", "/"])
def test_a_confined_cwd_cannot_leave_the_root(server: WinServer, cwd: str) -> None:
    done = server.cli("run", "--cwd", cwd, "-p", str(server.port), HOST, "--", "cd",
                      confined=True)
    assert done.returncode != 0
    assert b"outside this client's root" in done.stderr, done.stderr


def test_a_confined_command_runs_in_its_root(server: WinServer) -> None:
    done = server.cli("run", "-p", str(server.port), HOST, "--", "cd", confined=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("gbk").strip().lower().endswith("\\confined")


async def test_put_resumes_from_a_matching_partial(server: WinServer, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)
    src = tmp_path / "resume.bin"
    src.write_bytes(data)
    kept = 2 * 1024 * 1024 + 1
    (server.root / ".resume.bin.tether-part").write_bytes(data[:kept])
    async with tether.connect(HOST, server.port, home=server.client_home, timeout=60) as conn:
        result = await conn.put(src, "resume.bin")
    assert result.files[0].resumed_from == kept
    assert (server.root / "resume.bin").read_bytes() == data
    assert not (server.root / ".resume.bin.tether-part").exists()


async def test_a_partial_that_does_not_match_is_restarted(server: WinServer,
                                                           tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024)
    src = tmp_path / "stale.bin"
    src.write_bytes(data)
    (server.root / ".stale.bin.tether-part").write_bytes(b"not the same prefix" * 100)
    async with tether.connect(HOST, server.port, home=server.client_home, timeout=60) as conn:
        result = await conn.put(src, "stale.bin")
    assert result.files[0].resumed_from == 0
    assert (server.root / "stale.bin").read_bytes() == data


def test_the_blocking_api_runs_and_moves_files(server: WinServer, tmp_path: Path) -> None:
    src = tmp_path / "sync.txt"
    src.write_bytes("同步\r\n".encode("gbk"))
    with tether.SyncConnection(HOST, server.port, home=server.client_home, timeout=60) as conn:
        assert conn.server.encoding == "cp936"
        conn.put(src, "sync.txt")
        result = conn.run("type sync.txt")
        assert result.stdout == src.read_bytes()
        assert result.text == "同步\r\n"
        back = tmp_path / "back"
        back.mkdir()
        conn.get("sync.txt", back)
    assert (back / "sync.txt").read_bytes() == src.read_bytes()
