"""``tether.malloc``: with the bulk thresholds set, buffers of about 1 MiB whose sizes vary
(as TLS ciphertext and file chunks do) are reused from the heap instead of being mapped afresh
and faulted in page by page."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tether.malloc import is_glibc

CHURN = """
import resource, sys
from tether.malloc import tune_for_bulk
if sys.argv[1] == "tuned":
    assert tune_for_bulk()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):
    buf = bytearray((1 << 20) + i * 4096)  # 1 MiB and a little more each time
    buf[::4096] = b"x" * len(buf[::4096])  # touch every page
    del buf
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


@pytest.mark.skipif(not is_glibc(), reason="the thresholds are glibc's")
def test_bulk_thresholds_reuse_large_buffers() -> None:
    untuned, tuned = faults("default"), faults("tuned")
    assert untuned > 200 * 200  # each buffer a fresh mapping: ~257 faults per buffer
    assert tuned < untuned // 10
