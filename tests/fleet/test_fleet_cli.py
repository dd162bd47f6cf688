"""``tether run|put|get`` across the farm as a user types them: prefixed output, the summary,
``--group-output``, ``--json``, exit statuses, and the single-host path left as it was."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

from .farm import (
    ADDRESSES,
    SLOW,
    SLOW_COMMAND,
    STOPPED,
    TETHER,
    UNAUTHORIZED_B,
    UNTRUSTED_B,
    Farm,
    atether,
    cli_env,
    name_of,
)

NAMES = [name_of(a) for a in ADDRESSES]
SUMMARY = re.compile(r"^(\d+) hosts?: (\d+) ok, (\d+) failed", re.M)


def _summary(stderr: str) -> tuple[int, int, int]:
    match = SUMMARY.search(stderr)
    assert match, stderr
    total, ok, failed = (int(g) for g in match.groups())
    return total, ok, failed


async def test_run_all_streams_prefixed_lines(farm: Farm) -> None:
    done = await atether("run", "@all", "--", "echo one; echo two; echo err >&2",
                         home=farm.client_a)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 100
    for name in NAMES:
        mine = [line for line in lines if line.startswith(f"{name} | ")]
        assert mine == [f"{name} | one", f"{name} | two"]
        assert f"{name} | err" in done.stderr
        assert re.search(rf"^{name}\s+ok\s+\d+\.\d+s$", done.stderr, re.M)
    assert _summary(done.stderr) == (50, 50, 0)


async def test_run_group_output_and_partial_lines(farm: Farm) -> None:
    done = await atether("run", "--group-output", "--parallel", "8", "@disc", "--",
                         "printf 'a\\nno newline'", home=farm.client_a)
    assert done.returncode == 0, done.stderr
    for name in NAMES[:30]:
        assert re.search(rf"^=== {name}: ok \(\d+\.\d+ s\) ===\na\nno newline$", done.stdout,
                         re.M), done.stdout[:500]
    assert _summary(done.stderr) == (30, 30, 0)


async def test_run_failures_exit_status_and_json(farm: Farm, stopped: list[str]) -> None:
    done = await atether("run", "--json", "--host-timeout", "3", "@all", "--", SLOW_COMMAND,
                         home=farm.client_b)
    assert done.returncode == 255, done.stderr
    report = json.loads(done.stdout)
    kinds = {h["host"]: h["kind"] for h in report["hosts"]}
    expect = {**{name_of(a): "unreachable" for a in STOPPED},
              **{name_of(a): "unauthorized" for a in UNAUTHORIZED_B},
              **{name_of(a): "untrusted" for a in UNTRUSTED_B},
              **{name_of(a): "timeout" for a in SLOW}}
    assert {h: k for h, k in kinds.items() if k != "ok"} == expect
    assert report["ok"] == 42 and report["failed"] == 8
    ok = [h for h in report["hosts"] if h["ok"]]
    assert all(h["stdout"] == "fine\n" and h["status"] == 0 for h in ok)
    assert all(h["error"] for h in report["hosts"] if not h["ok"])
    assert _summary(done.stderr) == (50, 42, 8)
    for name, kind in expect.items():
        assert re.search(rf"^{name}\s+{kind}\s", done.stderr, re.M), done.stderr


async def test_exit_status_of_failed_commands_and_timeouts(farm: Farm) -> None:
    failed = await atether("run", "n02,n03", "--", "exit 3", home=farm.client_a)
    assert failed.returncode == 1
    assert re.search(r"^n02\s+exit 3\s", failed.stderr, re.M)
    slow = await atether("run", "--timeout", "0.3", ",".join(SLOW + ADDRESSES[:1]), "-p",
                         str(farm.port), "--", SLOW_COMMAND, home=farm.client_a)
    assert slow.returncode != 0  # "-p" after the target is part of the command: fails there
    slow = await atether("run", "-p", str(farm.port), "--timeout", "0.3",
                         ",".join(SLOW + ADDRESSES[:1]), "--", SLOW_COMMAND, home=farm.client_a)
    assert slow.returncode == 124, slow.stderr
    assert _summary(slow.stderr) == (3, 1, 2)


async def test_put_and_get_across_all(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "conf"
    (src / "sub").mkdir(parents=True)
    (src / "app.conf").write_text("port = 80\n")
    (src / "sub" / "extra.conf").write_text("x = 1\n")
    put = await atether("put", "-r", "--force", str(src), "@all:cli-put/", home=farm.client_a)
    assert put.returncode == 1 and _summary(put.stderr) == (50, 0, 50)  # no cli-put/ yet
    for node in farm.nodes.values():
        (node.root / "cli-put").mkdir(exist_ok=True)
    put = await atether("put", "-r", "--force", "--json", str(src), "@all:cli-put/",
                        home=farm.client_a)
    assert put.returncode == 0, put.stderr
    assert all(h["ok"] and h["files"] == 2 for h in json.loads(put.stdout)["hosts"])
    for node in farm.nodes.values():
        assert (node.root / "cli-put" / "conf" / "sub" / "extra.conf").read_text() == "x = 1\n"

    logs = tmp_path / "logs"
    get = await atether("get", "@all:cli-put/conf/app.conf", "n02:cli-put/conf/sub/extra.conf",
                        str(logs), home=farm.client_a)
    assert get.returncode == 1 and "same host" in get.stderr  # one target for all sources
    get = await atether("get", "@all:cli-put/conf/app.conf", str(logs), home=farm.client_a)
    assert get.returncode == 0, get.stderr
    assert sorted(p.name for p in logs.iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert (logs / name / "app.conf").read_text() == "port = 80\n"
    assert _summary(get.stderr) == (50, 50, 0)


async def test_get_r_safe_links_across_hosts(farm: Farm, tmp_path: Path) -> None:
    """Symlinks out of the tree are copied as links from every host; with --safe-links each
    host's skipped link is said on its prefixed line and listed in its JSON."""
    hosts = ["n02", "n03"]
    for address in ADDRESSES[:2]:
        tree = farm.nodes[address].root / "links"
        tree.mkdir(exist_ok=True)
        (tree / "f").write_text("x\n")
        if not os.path.lexists(tree / "out"):
            os.symlink("/etc/hostname", tree / "out")
    kept = await atether("get", "-r", ",".join(hosts) + ":links", str(tmp_path / "kept"),
                         home=farm.client_a)
    assert kept.returncode == 0, kept.stderr
    for name in hosts:
        assert os.readlink(tmp_path / "kept" / name / "links" / "out") == "/etc/hostname"
    safe = await atether("get", "-r", "--safe-links", "--json", ",".join(hosts) + ":links",
                         str(tmp_path / "safe"), home=farm.client_a)
    assert safe.returncode == 0, safe.stderr
    for name in hosts:
        assert not os.path.lexists(tmp_path / "safe" / name / "links" / "out")
        assert (tmp_path / "safe" / name / "links" / "f").read_text() == "x\n"
        assert re.search(rf"^{name}\s*\| tether: links/out: symlink to /etc/hostname leaves the "
                         rf"tree; skipped \(--safe-links\)$", safe.stderr, re.M), safe.stderr
    report = {h["host"]: h["skipped"] for h in json.loads(safe.stdout)["hosts"]}
    assert report == {name: [{"path": "links/out", "target": "/etc/hostname"}] for name in hosts}


RESUMING = {"n02": 1000, "n03": 70_000}  # bytes of an interrupted transfer left per host


def _plant_prefix(src: Path, partial: Path, size: int) -> None:
    """The partial file an interrupted transfer of ``src`` leaves: its first ``size`` bytes."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(src.read_bytes()[:size])


async def test_put_and_get_note_each_host_that_resumed(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "resume.bin"
    src.write_bytes(bytes(range(256)) * 4096)  # 1 MiB: above SMALL_FILE, so never batched
    roots = {name_of(a): node.root for a, node in farm.nodes.items()}
    for name, kept in RESUMING.items():
        _plant_prefix(src, roots[name] / ".fleet-resume.bin.tether-part", kept)
    put = await atether("put", str(src), "n02,n03,n04:fleet-resume.bin", home=farm.client_a)
    assert put.returncode == 0, put.stderr
    for name, kept in RESUMING.items():
        assert f"{name} | tether: fleet-resume.bin: resumed at {kept} bytes\n" in put.stderr
    assert "n04 | " not in put.stderr
    for name in ("n02", "n03", "n04"):
        assert (roots[name] / "fleet-resume.bin").read_bytes() == src.read_bytes()

    logs = tmp_path / "logs"
    for name, kept in RESUMING.items():
        _plant_prefix(src, logs / name / ".fleet-resume.bin.tether-part", kept)
    get = await atether("get", "--json", "n02,n03,n04:fleet-resume.bin", str(logs),
                        home=farm.client_a)
    assert get.returncode == 0, get.stderr
    hosts = {h["host"]: h for h in json.loads(get.stdout)["hosts"]}
    assert {n: [r["at"] for r in h["resumed"]] for n, h in hosts.items()} == {
        "n02": [1000], "n03": [70_000], "n04": []}
    assert "n03 | tether: " in get.stderr and "resumed at 70000 bytes" in get.stderr
    for name in ("n02", "n03", "n04"):
        assert (logs / name / "fleet-resume.bin").read_bytes() == src.read_bytes()


async def test_progress_is_refused_for_several_hosts(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text("p\n")
    put = await atether("put", "--progress", str(src), "n02,n03:fleet-progress.txt",
                        home=farm.client_a)
    assert put.returncode != 0
    assert put.stderr.count("\n") == 1 and put.stderr.startswith("tether: ")
    assert "--progress" in put.stderr and "Traceback" not in put.stderr
    assert not any((node.root / "fleet-progress.txt").exists() for node in farm.nodes.values())


async def test_transfers_report_failed_hosts(farm: Farm, stopped: list[str],
                                             tmp_path: Path) -> None:
    file = tmp_path / "f.txt"
    file.write_text("hello\n")
    put = await atether("put", "--force", "--host-timeout", "5", str(file), "@all:f.txt",
                        home=farm.client_b)
    assert put.returncode == 255
    assert _summary(put.stderr) == (50, 44, 6)
    get = await atether("get", "--force", "@all:f.txt", str(tmp_path / "back"),
                        home=farm.client_b)
    assert get.returncode == 255
    assert len(list((tmp_path / "back").glob("*/f.txt"))) == 44


async def test_single_plain_host_keeps_the_one_host_path(farm: Farm) -> None:
    done = await atether("run", "-p", str(farm.port), ADDRESSES[0], "--", "echo plain; exit 5",
                         home=farm.client_a)
    assert done.returncode == 5
    assert done.stdout == "plain\n" and "hosts:" not in done.stderr


async def test_unknown_group_is_an_error(farm: Farm) -> None:
    done = await atether("run", "@nosuch", "--", "true", home=farm.client_a)
    assert done.returncode == 1
    assert "no hosts in @nosuch" in done.stderr and "@farm" in done.stderr


async def test_shell_takes_an_inventory_name_but_not_a_fleet(farm: Farm) -> None:
    done = await asyncio.to_thread(
        subprocess.run, [*TETHER, "shell", "n02"], input="echo via-inventory\n",
        capture_output=True, text=True, timeout=60, env=cli_env(farm.client_a))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "via-inventory\n"
    many = await atether("shell", "@farm", home=farm.client_a)
    assert many.returncode == 1 and "means 50 hosts" in many.stderr


async def test_one_inventory_name_keeps_the_one_host_path(farm: Farm, tmp_path: Path) -> None:
    """A name is one host: stdin is forwarded, output is plain, the status is the remote one,
    and put/get reach it at the inventory's address and port."""
    done = await asyncio.to_thread(
        subprocess.run, [*TETHER, "run", "n03", "--", "cat; exit 6"], input="forwarded\n",
        capture_output=True, text=True, timeout=60, env=cli_env(farm.client_a))
    assert done.returncode == 6, done.stderr
    assert done.stdout == "forwarded\n" and "hosts:" not in done.stderr
    src = tmp_path / "one.txt"
    src.write_text("to one host\n")
    put = await atether("put", "--force", str(src), "n03:one.txt", home=farm.client_a)
    assert put.returncode == 0, put.stderr
    get = await atether("get", "--force", "n03:one.txt", str(tmp_path / "back.txt"),
                        home=farm.client_a)
    assert get.returncode == 0, get.stderr
    assert (tmp_path / "back.txt").read_text() == "to one host\n"
