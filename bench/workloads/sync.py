"""Workload ``sync`` (issue 17): ``tether sync`` against ``rsync -a`` over the private sshd, whole
processes, side by side in one run, on the tmpfs and on an ext4 directory (the bench's
temporary directory, on the root file system: check ``df -T``).

A tree of 10,000 files of mixed sizes (100 B to 64 KiB, fixed seed) at full size: the first
sync into an empty destination; a re-sync with 1% of the files changed; a re-sync with nothing
changed (also with ``--checksum`` / ``rsync -c``); a re-sync after 1,000 files were removed at the
source, with ``--delete``. Before those, the same tree pushed to 10 hosts, first and again
with 1% changed (``bench/workloads/sync_fleet.py``, on the tmpfs). Then a 1 GiB file with 1 MiB
changed in the middle (on ext4), where the bytes on the wire are recorded too (tether's
``bytes_sent`` + ``bytes_signatures`` from ``--json``; rsync's "Total bytes sent" + "received"
from ``--stats``). Each contender keeps its own destination; what a round changes is made before
the round's timer starts. Values are wall seconds (lower is better).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench import MiB
from bench.config import Context
from bench.peers import HOST, SSH_ALIAS, TetherServer
from bench.procs import BenchError, run_measured
from bench.stats import Contender, Group, GroupResult, Sample, Target, run_group
from bench.workloads import sync_fleet

SEED = 17
ROUNDS = 3  # per group (there are eleven): the machine is shared, a full run must stay short


def make_tree(root: Path, files: int) -> None:
    """``files`` files of 100 B to 64 KiB, 100 to a directory, two levels deep."""
    rng = random.Random(SEED)
    for i in range(files):
        path = root / f"{i // 1000:02d}" / f"{i // 100 % 10}" / f"f{i:05d}"
        if i % 100 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(100, 64 * 1024)))


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def change(paths: list[Path], count: int, seed: int) -> None:
    """New content (same size) and a new mtime for ``count`` of the files."""
    rng = random.Random(seed)
    for path in rng.sample(paths, count):
        size = path.stat().st_size
        path.write_bytes(rng.randbytes(size))


class Place:
    """One place the trees live (tmpfs or ext4): a source and each contender's destination."""

    def __init__(self, ctx: Context, base: Path, kind: str) -> None:
        self.ctx, self.base, self.kind = ctx, base, kind
        self.src = base / "src"
        self.dest = {"tether": base / "dest-tether", "rsync -a": base / "dest-rsync"}

    def remote(self, who: str) -> str:
        return str(self.dest[who])

    def tether(self, server: TetherServer, *args: str) -> list[str]:
        return self.ctx.peers.tether_cli("sync", *server.cli_flags(), *args)

    def rsync(self, *args: str) -> list[str]:
        return self.ctx.peers.sshd.rsync(*args)

    def timed(self, who: str, cmd: list[str], tag: str) -> Sample:
        m = run_measured(cmd, self.ctx.log(f"sync-{self.kind}-{tag}-{who.split()[0]}"),
                         timeout=1800)
        return Sample(m.seconds, {"seconds": m.seconds})


def _sync_cmds(place: Place, server: TetherServer, extra_t: tuple[str, ...] = (),
               extra_r: tuple[str, ...] = ()) -> dict[str, Callable[[], list[str]]]:
    src = f"{place.src}/"
    return {
        "tether": lambda: place.tether(server, *extra_t, src, f"{HOST}:{place.remote('tether')}"),
        "rsync -a": lambda: place.rsync("-a", *extra_r, src,
                                        f"{SSH_ALIAS}:{place.remote('rsync -a')}/"),
    }


def _group(key: str, title: str, place: Place, cmds: dict[str, Callable[[], list[str]]],
           before: Callable[[str], None], target: tuple[str, float] | None, note: str = ""
           ) -> Group:
    def bind(who: str) -> Callable[[], Sample]:
        def run() -> Sample:
            before(who)
            return place.timed(who, cmds[who](), key.split()[1])
        return run

    contenders = [Contender(who, bind(who), " ".join([*cmds[who]()[:1], "sync", "..."])
                            if who == "tether" else "rsync -a SRC/ HOST:DEST/",
                            tether=who == "tether") for who in cmds]
    targets = [] if target is None else [
        Target(target[0], "tether", "<=", target[1], peer="rsync -a")]
    return Group(key=key, title=title, unit="s", better="lower", quantity="time",
                 contenders=contenders, targets=targets, note=note, rounds=ROUNDS)


def tree_groups(ctx: Context, place: Place, server: TetherServer) -> list[GroupResult]:
    n = ctx.sizes.tree_files
    rounds, warmup = ctx.sizes.rounds, ctx.sizes.warmup
    out: list[GroupResult] = []
    kind = place.kind

    def fresh(who: str) -> None:
        shutil.rmtree(place.dest[who], ignore_errors=True)

    first_limit = 1 / 1.5 if kind == "tmpfs" else 1 / 1.2
    out.append(run_group(_group(
        f"sync first-{kind}", f"first sync of {n:,} files (100 B-64 KiB) on {kind}", place,
        _sync_cmds(place, server), fresh,
        (f">= {1 / first_limit:g}x rsync's speed on {kind}", first_limit)), rounds, warmup))
    # both destinations are now complete; each round changes 1% of the source first
    paths = files_of(place.src)
    # before each round (every second run) 1% of the files change: both contenders then find
    # exactly that 1% changed against their own destination, synced the round before
    out.append(run_group(_group(
        f"sync resync1-{kind}", f"re-sync, 1% of {n:,} files changed, on {kind}", place,
        _sync_cmds(place, server), _changed_for(place, paths, n),
        ("<= 0.5x rsync's time", 0.5)), rounds, warmup))
    for checksum in (False, True):
        flag_t = ("--checksum",) if checksum else ()
        flag_r = ("-c",) if checksum else ()
        label = " (--checksum)" if checksum else ""
        out.append(run_group(_group(
            f"sync same{'-c' if checksum else ''}-{kind}",
            f"re-sync, nothing changed{label}, {n:,} files on {kind}", place,
            _sync_cmds(place, server, flag_t, flag_r), lambda who: None,
            ("<= 0.5x rsync's time", 0.5)), rounds, warmup))
    removed = paths[: max(1, n // 10)]

    def remove_some(who: str) -> None:
        for path in removed:  # removed at the source; put back in the destination
            rel = path.relative_to(place.src)
            target = place.dest[who] / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"x" * 100)
            path.unlink(missing_ok=True)

    out.append(run_group(_group(
        f"sync delete-{kind}", f"{len(removed):,} files removed at the source, --delete, "
                               f"on {kind}", place,
        _sync_cmds(place, server, ("--delete",), ("--delete",)), remove_some,
        ("<= rsync's time", 1.0)), rounds, warmup))
    return out


def _changed_for(place: Place, paths: list[Path], n: int) -> Callable[[str], None]:
    """Before every second run (the start of a round of two contenders), 1% of the source's
    files get new content: a new set each round."""
    runs = {"count": 0}

    def before(who: str) -> None:
        if runs["count"] % 2 == 0:
            change(paths, max(1, n // 100), runs["count"])
        runs["count"] += 1
    return before


def big_group(ctx: Context, place: Place, server: TetherServer) -> GroupResult:
    size = ctx.sizes.file_bytes
    big = place.base / "big-src" / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as fh:
        rng = random.Random(SEED)
        for _ in range(0, size, 16 * MiB):
            fh.write(rng.randbytes(min(16 * MiB, size - fh.tell())))
    dests = {who: place.base / f"big-{who.split()[0]}" for who in ("tether", "rsync -a")}
    for _who, dest in dests.items():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(big, dest / "big.bin")
    runs = {"count": 0}

    def patch(who: str) -> None:
        """At the start of each round, 1 MiB in the middle changes; each destination holds
        the version of the round before."""
        if runs["count"] % 2 == 0:
            with big.open("r+b") as fh:
                fh.seek(size // 2)
                fh.write(os.urandom(min(MiB, size // 4)))
        runs["count"] += 1

    def tether() -> Sample:
        patch("tether")
        out = subprocess.run(ctx.peers.tether_cli(
            "sync", *server.cli_flags(), "--json", f"{big.parent}/",
            f"{HOST}:{dests['tether']}"), capture_output=True, text=True, timeout=1800)
        if out.returncode:
            raise BenchError(f"tether sync: {out.stderr.strip()}")
        report = json.loads(out.stdout)
        return Sample(report["seconds"], {"wire_mib": (report["bytes_sent"] +
                                                       report["bytes_signatures"]) / MiB})

    def rsync() -> Sample:
        patch("rsync -a")
        import time

        started = time.perf_counter()
        out = subprocess.run(place.rsync("-a", "--stats", f"{big.parent}/",
                                         f"{SSH_ALIAS}:{dests['rsync -a']}/"),
                             capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        if out.returncode:
            raise BenchError(f"rsync: {out.stderr.strip()}")
        sent = re.search(r"Total bytes sent: ([\d,]+)", out.stdout)
        got = re.search(r"Total bytes received: ([\d,]+)", out.stdout)
        wire = sum(int(m.group(1).replace(",", "")) for m in (sent, got) if m)
        return Sample(seconds, {"wire_mib": wire / MiB})

    group = Group(
        key=f"sync big-{place.kind}", title=f"a {size // MiB} MiB file, 1 MiB changed in the "
                                            f"middle, on {place.kind}",
        unit="s", better="lower", quantity="time", rounds=ROUNDS,
        contenders=[Contender("tether", tether, "tether sync DIR/ HOST:DEST", tether=True),
                    Contender("rsync -a", rsync, "rsync -a --stats DIR/ HOST:DEST/")],
        targets=[Target("<= 0.5x rsync's time", "tether", "<=", 0.5, peer="rsync -a"),
                 Target("<= 2 MiB payload on the wire", "tether", "<=", 2.0,
                        metric="wire_mib")],
        note="tether's time is its own --json seconds (the connection included); rsync's the "
             "wall time of the process")
    try:
        return run_group(group, ctx.sizes.rounds, ctx.sizes.warmup)
    finally:
        shutil.rmtree(big.parent, ignore_errors=True)
        for dest in dests.values():
            shutil.rmtree(dest, ignore_errors=True)


def run(ctx: Context) -> list[GroupResult]:
    # the push to 10 hosts first, on its own tree (its 21 copies leave the tmpfs before the rest)
    results: list[GroupResult] = sync_fleet.groups(ctx, ctx.peers.fast / "sync10", make_tree,
                                                   change)
    disk = ctx.peers.tmp / "disk"
    places = [Place(ctx, ctx.peers.fast / "sync", "tmpfs"), Place(ctx, disk, "ext4")]
    with ctx.peers.tether_server() as server:
        for place in places:
            make_tree(place.src, ctx.sizes.tree_files)
            try:
                results += tree_groups(ctx, place, server)
            finally:
                shutil.rmtree(place.base, ignore_errors=True)
        disk.mkdir(parents=True, exist_ok=True)
        results.append(big_group(ctx, places[1], server))
        shutil.rmtree(disk, ignore_errors=True)
    return results
