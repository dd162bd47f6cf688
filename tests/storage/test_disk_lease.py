"""A file a disk-pool thread is reading is closed only once the thread is done with it: a get
or batch ended mid-read must never close a descriptor under a thread (the number could be
reused by another client's file before the thread's read)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from tether.server.diskpool import DiskPool, Lease


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_a_stream_ended_mid_read_closes_the_file_after_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    lease = Lease(lambda: os.close(fd))
    inside, release = threading.Event(), threading.Event()

    def slow_read() -> bytes:
        inside.set()
        release.wait(10)
        return os.pread(fd, 4096, 0)

    pool = DiskPool(2, 1)
    try:
        reading = asyncio.ensure_future(pool.run("client", lease.call, slow_read))
        await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
        reading.cancel()  # the stream ended
        lease.close()
        assert _is_open(fd), "closed under a reading thread"
        release.set()
        for _ in range(200):
            if not _is_open(fd):
                break
            await asyncio.sleep(0.01)
        assert not _is_open(fd), "never closed after the thread left"
        with pytest.raises(OSError, match="ended"):  # nothing more runs on it
            lease.call(os.pread, fd, 1, 0)
    finally:
        release.set()
        pool.close()


def test_a_lease_no_thread_uses_closes_at_once(tmp_path: Path) -> None:
    closed: list[bool] = []
    lease = Lease(lambda: closed.append(True))
    assert lease.call(len, b"abc") == 3
    lease.close()
    lease.close()
    assert closed == [True]
