"""How to make many small files durable cheaply (issue 17, "Durable without rsync's cost").

Writes the sync workload's tree (10,000 files of 100 B-64 KiB, ~320 MB, the same seed) into a
directory on a real disk with one durability strategy, timed, after another writer (standing in
for rsync, which never fsyncs) left the same amount of dirty pages behind, as the bench's
alternating order does. Every strategy stores the files as the receivers do: an unnamed
``O_TMPFILE`` (or, for ``syncfs-named``, a named partial) written, made durable, then linked
(renamed) into place, each directory fsynced once per group.

    python -m bench.durability DIR [--strategy NAME ...] [--rounds N] [--no-other]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.workloads.sync import SEED

WRITE = 2  # SYNC_FILE_RANGE_WRITE
WAIT_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
_libc = ctypes.CDLL(None, use_errno=True)
_sfr = _libc.sync_file_range
_sfr.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_syncfs = _libc.syncfs
_syncfs.argtypes = [ctypes.c_int]

WAITED = 0.0  # seconds the writer spent waiting for durability (and linking)
Files = list[tuple[str, str, bytes]]  # (directory, name, content)


def tree(count: int) -> Files:
    import random

    rng = random.Random(SEED)
    out: Files = []
    for i in range(count):
        out.append((f"{i // 1000:02d}/{i // 100 % 10}", f"f{i:05d}",
                    rng.randbytes(rng.randint(100, 64 * 1024))))
    return out


class Dirs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def get(self, rel: str) -> int:
        fd = self.fds.get(rel)
        if fd is None:
            (self.root / rel).mkdir(parents=True, exist_ok=True)
            fd = self.fds[rel] = os.open(self.root / rel, os.O_RDONLY | os.O_DIRECTORY)
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fchmod(fd, 0o644)
    os.utime(fd, ns=(1, 1))


def _link(fd: int, dir_fd: int, name: str) -> None:
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


class Grouped:
    """Files written unnamed, made durable a group at a time by ``durable``, then linked and
    their directories fsynced; ``pipelined``: a group is made durable on a thread while the
    next is written (at most one group waiting)."""

    def __init__(self, dirs: Dirs, durable: Callable[[list[int]], None], group: int,
                 start: Callable[[int], None] | None, pipelined: bool) -> None:
        self.dirs, self.durable, self.group, self.start = dirs, durable, group, start
        self.pending: list[tuple[int, int, str]] = []
        self.bytes = 0
        self.pipelined = pipelined
        self.thread: threading.Thread | None = None

    def add(self, rel: str, name: str, data: bytes) -> None:
        dir_fd = self.dirs.get(rel)
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        _write(fd, data)
        if self.start is not None:
            self.start(fd)
        self.pending.append((fd, dir_fd, name))
        self.bytes += len(data)
        if len(self.pending) >= self.group or self.bytes >= 64 << 20:
            self.flush()

    def flush(self) -> None:
        global WAITED
        started = time.perf_counter()
        batch, self.pending, self.bytes = self.pending, [], 0
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if batch:
            if self.pipelined:
                self.thread = threading.Thread(target=self._finish, args=(batch,))
                self.thread.start()
            else:
                self._finish(batch)
        WAITED += time.perf_counter() - started

    def _finish(self, batch: list[tuple[int, int, str]]) -> None:
        self.durable([fd for fd, _, _ in batch])
        touched = set()
        for fd, dir_fd, name in batch:
            _link(fd, dir_fd, name)
            os.close(fd)
            touched.add(dir_fd)
        for dir_fd in touched:
            os.fsync(dir_fd)

    def end(self) -> None:
        global WAITED
        self.flush()
        started = time.perf_counter()
        if self.thread is not None:
            self.thread.join()
        WAITED += time.perf_counter() - started


def serial(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def parallel(threads: int, pool: ThreadPoolExecutor) -> Callable[[list[int]], None]:
    def run(fds: list[int]) -> None:
        n = max(1, min(threads, len(fds)))
        list(pool.map(serial, [fds[i::n] for i in range(n)]))
    return run


def wait_then_serial(fds: list[int]) -> None:
    for fd in fds:
        _sfr(fd, 0, 0, WAIT_ALL)
    serial(fds)


def start_write(fd: int) -> None:
    _sfr(fd, 0, 0, WRITE)


def none(fds: list[int]) -> None:
    return None


def syncfs_named(files: Files, root: Path, group: int, sync: bool = True) -> None:
    """main's DurableGroup: named partials, one syncfs per group, rename, fsync each dir."""
    dirs = Dirs(root)
    pending: list[tuple[int, str]] = []
    size = 0

    def flush() -> None:
        nonlocal pending, size
        global WAITED
        if not pending:
            return
        started = time.perf_counter()
        if sync:
            _syncfs(pending[0][0])
        touched = set()
        for dir_fd, name in pending:
            os.rename(f".{name}.tether-part", name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            touched.add(dir_fd)
        for dir_fd in touched if sync else ():
            os.fsync(dir_fd)
        pending, size = [], 0
        WAITED += time.perf_counter() - started

    for rel, name, data in files:
        dir_fd = dirs.get(rel)
        fd = os.open(f".{name}.tether-part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600,
                     dir_fd=dir_fd)
        _write(fd, data)
        os.close(fd)
        pending.append((dir_fd, name))
        size += len(data)
        if len(pending) >= group or size >= 64 << 20:
            flush()
    flush()
    dirs.close()


def per_file(files: Files, root: Path, group: int) -> None:
    """main's put -r: each file fsynced as written, linked; each directory fsynced at the end."""
    dirs = Dirs(root)
    for rel, name, data in files:
        dir_fd = dirs.get(rel)
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        _write(fd, data)
        started = time.perf_counter()
        os.fsync(fd)
        _link(fd, dir_fd, name)
        global WAITED
        WAITED += time.perf_counter() - started
        os.close(fd)
    for fd in dirs.fds.values():
        os.fsync(fd)
    dirs.close()


def strategies(pool: ThreadPoolExecutor) -> dict[str, Callable[[Files, Path, int], None]]:
    def grouped(durable: Callable[[list[int]], None], start: Callable[[int], None] | None = None,
                pipelined: bool = False) -> Callable[[Files, Path, int], None]:
        def run(files: Files, root: Path, group: int) -> None:
            dirs = Dirs(root)
            g = Grouped(dirs, durable, group, start, pipelined)
            for rel, name, data in files:
                g.add(rel, name, data)
            g.end()
            dirs.close()
        return run

    out: dict[str, Callable[[Files, Path, int], None]] = {
        "none": grouped(none),
        "syncfs-named": syncfs_named,
        "none-named": lambda f, r, g: syncfs_named(f, r, g, sync=False),
        "per-file": per_file,
        "serial": grouped(serial),
        "sfr+serial": grouped(serial, start_write),
        "sfr+wait+serial": grouped(wait_then_serial, start_write),
    }
    for t in (4, 8, 16, 64):
        out[f"par{t}"] = grouped(parallel(t, pool))
        out[f"sfr+par{t}"] = grouped(parallel(t, pool), start_write)
        out[f"sfr+par{t}+pipe"] = grouped(parallel(t, pool), start_write, pipelined=True)
    out["par16+pipe"] = grouped(parallel(16, pool), pipelined=True)
    return out


def other_writer(files: Files, root: Path) -> None:
    """What rsync leaves: the same tree, written, never synced."""
    for rel, name, data in files:
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--strategy", action="append")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--group", type=int, default=1024)
    ap.add_argument("--no-other", action="store_true")
    args = ap.parse_args()
    files = tree(args.files)
    with ThreadPoolExecutor(64) as pool:
        table = strategies(pool)
        names = args.strategy or list(table)
        times: dict[str, list[float]] = {n: [] for n in names}
        waits: dict[str, list[float]] = {n: [] for n in names}
        trial = 0
        for _ in range(args.rounds):
            for name in names:
                # fresh directories each trial: ext4 skips inodes freed in the last ~30 s one
                # by one, so creating files right after removing a tree costs far more
                trial += 1
                dest, other = args.dir / f"dest{trial}", args.dir / f"other{trial}"
                for p in (args.dir / f"dest{trial - 2}", args.dir / f"other{trial - 2}"):
                    shutil.rmtree(p, ignore_errors=True)
                os.sync()
                dest.mkdir(parents=True)
                other_s = 0.0
                if not args.no_other:
                    other_s = time.perf_counter()
                    other_writer(files, other)
                    other_s = time.perf_counter() - other_s
                global WAITED
                WAITED = 0.0
                started = time.perf_counter()
                before = resource.getrusage(resource.RUSAGE_SELF)
                table[name](files, dest, args.group)
                times[name].append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                waits[name].append(WAITED)
                print(f"{name:18} {times[name][-1]:.2f} s (waited {WAITED:.2f} s, cpu {cpu:.2f} s; "
                      f"the other writer "
                      f"{other_s:.2f} s; load {os.getloadavg()[0]:.1f})", flush=True)
        for old in range(trial - 1, trial + 1):
            shutil.rmtree(args.dir / f"dest{old}", ignore_errors=True)
            shutil.rmtree(args.dir / f"other{old}", ignore_errors=True)
    print("--- median (min) over", args.rounds, "rounds, group", args.group)
    for name in names:
        print(f"{name:18} {statistics.median(times[name]):.2f} ({min(times[name]):.2f}) s; "
              f"waited {statistics.median(waits[name]):.2f} ({min(waits[name]):.2f}) s")


if __name__ == "__main__":
    main()
