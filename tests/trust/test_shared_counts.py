"""The counters privilege-separated workers share (server/privsep.py): limits hold across
processes, and slots are freed after their last worker, so a long-lived server never runs out."""

from __future__ import annotations

import os

from tether.server.limits import Admission, Limits
from tether.server.privsep import SLOTS, SharedCounts, WorkerAdmission


def test_slots_are_reused_after_their_last_worker() -> None:
    counts = SharedCounts()
    for i in range(SLOTS * 2):  # more sessions than slots, one after another
        slot = counts.acquire(f"worker {i}")
        assert counts.add(slot, 1)
        counts.release(f"worker {i}")
    first, second = counts.acquire("user build"), counts.acquire("user build")
    assert first == second and counts.value(first) == 0
    counts.release("user build")
    assert "user build" in counts.slots  # one worker still uses it
    counts.release("user build")
    assert "user build" not in counts.slots and len(counts.free) == SLOTS


def test_a_limit_holds_across_processes() -> None:
    counts = SharedCounts()
    user, identity, held = (counts.acquire(k) for k in ("user b", "id x", "worker 1"))
    admission = WorkerAdmission(Admission(Limits(max_processes_per_client=2)), counts,
                                (user, identity), held)
    pid = os.fork()
    if pid == 0:  # another worker of the same account takes one process slot
        os._exit(0 if admission.admit_process("x") is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert admission.admit_process("x") is None
    refusal = admission.admit_process("x")
    assert refusal == "too many processes for this account (limit 2)"
    assert (counts.value(user), counts.value(identity)) == (2, 2)
    admission.process_ended("x")
    assert admission.admit_process("x") is None
