"""kill -9 mid-transfer, with real processes: the ``tether put``/``tether get`` CLI and
``tether serve``. Whichever side dies, the final name never appears, the partial is kept, and
running the same command again (after restarting the server on the same home and port) ends
with an identical file and says "resumed at N bytes" (N > 0, and N is exactly what the partial
held). A partial corrupted after the kill is detected and the transfer restarts from zero.

The kill is aimed, not timed: the test watches the partial grow past a threshold and only then
sends SIGKILL, so it always lands mid-transfer however loaded the machine is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import ServeProcess, stop_process

from .conftest import ServeFactory
from .helpers import (
    HOST,
    RESUMED,
    Identities,
    MiB,
    file_size,
    flip_bytes,
    kill9,
    lock_free,
    make_file,
    part_of,
    popen_cli,
    run_cli,
    same_bytes,
    wait_until,
)

BIG = 384 * MiB + 17
THRESHOLD = 24 * MiB


def kill_when_partial_grows(victim: subprocess.Popen[bytes], partial: Path,
                            watch: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``victim`` once ``partial`` holds THRESHOLD bytes; fail if ``watch`` (the CLI
    doing the transfer) ended first."""
    grew = wait_until(lambda: file_size(partial) >= THRESHOLD or watch.poll() is not None,
                      timeout=60, interval=0.001)
    assert watch.poll() is None, "the transfer ended before it could be interrupted"
    assert grew, f"{partial} never grew past {THRESHOLD} bytes"
    kill9(victim)


def rerun(args: list[str], home: Path) -> tuple[int | None, dict[str, object]]:
    """Run the same CLI command again; (the N of "resumed at N bytes", the JSON summary)."""
    done = run_cli(*args, home=home)
    assert done.returncode == 0, done.stderr
    match = RESUMED.search(done.stderr)
    return (int(match.group(1)) if match else None), json.loads(done.stdout)


def put_args(server: ServeProcess, src: Path, remote: str) -> list[str]:
    return ["put", "-p", str(server.port), "--accept-new", "--json", str(src),
            f"{HOST}:{remote}"]


def get_args(server: ServeProcess, remote: str, local: Path) -> list[str]:
    return ["get", "-p", str(server.port), "--accept-new", "--json", f"{HOST}:{remote}",
            str(local)]


@pytest.mark.parametrize("corrupt", [False, True], ids=["resume", "corrupted partial"])
def test_kill9_client_mid_put(serve: ServeFactory, ids: Identities, work: Path,
                              corrupt: bool) -> None:
    server = serve()
    src = make_file(work / "big file.bin", BIG, seed=1, mode=0o640, mtime_ns=1_111_111_111)
    dest = server.root / "big file.bin"
    partial = part_of(dest)
    args = put_args(server, src, "big file.bin")
    proc = popen_cli(*args, home=ids.client_home, log=work / "put.log")
    try:
        kill_when_partial_grows(proc, partial, proc)
    finally:
        stop_process(proc)
    assert proc.returncode == -9
    assert wait_until(lambda: lock_free(partial))  # the server has abandoned the stream
    assert not dest.exists()  # never a partial file under the final name
    kept = partial.stat().st_size
    assert THRESHOLD <= kept < BIG
    if corrupt:
        flip_bytes(partial, kept // 2)

    resumed_at, summary = rerun(args, ids.client_home)
    if corrupt:
        assert resumed_at is None
        assert summary["resumed"] == []
    else:
        assert resumed_at == kept
        assert summary["resumed"] == [{"path": "big file.bin", "at": kept}]
    assert summary["bytes"] == (BIG if corrupt else BIG - kept)
    assert same_bytes(src, dest)
    assert dest.stat().st_mode & 0o777 == 0o640
    assert dest.stat().st_mtime_ns == 1_111_111_111
    assert not partial.exists()
    assert server.alive()


def test_kill9_server_mid_put(serve: ServeFactory, ids: Identities, work: Path) -> None:
    server = serve()
    src = make_file(work / "big.bin", BIG, seed=2)
    dest = server.root / "big.bin"
    partial = part_of(dest)
    args = put_args(server, src, "big.bin")
    proc = popen_cli(*args, home=ids.client_home, log=work / "put.log")
    try:
        kill_when_partial_grows(server.proc, partial, proc)
        proc.wait(60)
    finally:
        stop_process(proc)
    assert proc.returncode == 255  # the connection broke
    log = (work / "put.log").read_text()
    lines = log.strip().splitlines()
    assert len(lines) == 2, log  # --json prints its report on failure too, then one error line
    report, line = lines
    assert json.loads(report)["ok"] is False and line.startswith("tether: "), log
    assert not dest.exists()
    kept = partial.stat().st_size
    assert THRESHOLD <= kept < BIG

    restarted = serve(home=server.home, root=server.root, port=server.port)
    assert restarted.port == server.port
    resumed_at, summary = rerun(args, ids.client_home)
    assert resumed_at == kept
    assert summary["resumed"] == [{"path": "big.bin", "at": kept}]
    assert same_bytes(src, dest)
    assert not partial.exists()


def test_kill9_server_mid_get(serve: ServeFactory, ids: Identities, work: Path) -> None:
    server = serve()
    remote = make_file(server.root / "big.bin", BIG, seed=3, mode=0o604,
                       mtime_ns=2_222_222_222)
    local = work / "local"
    local.mkdir()
    partial = part_of(local / "big.bin")
    args = get_args(server, "big.bin", local)
    proc = popen_cli(*args, home=ids.client_home, log=work / "get.log")
    try:
        kill_when_partial_grows(server.proc, partial, proc)
        proc.wait(60)
    finally:
        stop_process(proc)
    assert proc.returncode == 255
    assert sorted(p.name for p in local.iterdir()) == [partial.name]
    kept = partial.stat().st_size
    assert THRESHOLD <= kept < BIG

    serve(home=server.home, root=server.root, port=server.port)
    resumed_at, summary = rerun(args, ids.client_home)
    assert resumed_at == kept
    assert summary["resumed"] == [{"path": str(local / "big.bin"), "at": kept}]
    assert same_bytes(remote, local / "big.bin")
    assert (local / "big.bin").stat().st_mode & 0o777 == 0o604
    assert (local / "big.bin").stat().st_mtime_ns == 2_222_222_222
    assert sorted(p.name for p in local.iterdir()) == ["big.bin"]


def test_kill9_client_mid_get(serve: ServeFactory, ids: Identities, work: Path) -> None:
    server = serve()
    remote = make_file(server.root / "big.bin", BIG, seed=4)
    local = work / "local"
    local.mkdir()
    args = get_args(server, "big.bin", local / "copy.bin")
    partial = part_of(local / "copy.bin")
    proc = popen_cli(*args, home=ids.client_home, log=work / "get.log")
    try:
        kill_when_partial_grows(proc, partial, proc)
    finally:
        stop_process(proc)
    assert not (local / "copy.bin").exists()
    kept = partial.stat().st_size
    assert THRESHOLD <= kept < BIG

    resumed_at, _ = rerun(args, ids.client_home)
    assert resumed_at == kept
    assert same_bytes(remote, local / "copy.bin")
    assert server.alive()
