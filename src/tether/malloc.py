"""Keep glibc from mapping and unmapping every large buffer of a bulk transfer.

A 1 MiB DATA frame passes through several buffers of about 1 MiB (the file chunk, TLS
ciphertext out of the memory BIO, the transport's send buffer). glibc serves allocations above
its mmap threshold with a fresh ``mmap`` and returns them with ``munmap`` on free; its dynamic
threshold only rises to the largest size freed so far, and these sizes vary by a few bytes to a
few KiB, so in practice one such buffer per frame is a new mapping and every page of it faults
in (zero-filled by the kernel) again: one fault per 4 KiB sent, ~30 % of the sending side's CPU
in ``tether put`` (docs/benchmarks.md, workload 4). A fixed 4 MiB threshold keeps them on the
heap, where freed memory is reused; memory above 8 MiB free at the top of the heap still goes
back to the system.
"""

from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3


def is_glibc() -> bool:
    """True when this process allocates with glibc's malloc (``mallopt`` means what we set)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def tune_for_bulk() -> bool:
    """Set the thresholds above for this process; False where the allocator is not glibc's."""
    if not is_glibc():
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
