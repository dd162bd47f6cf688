"""What a command leaves behind when its leader exits by itself (issue 14, item 13).

As with sshd, the group is hung up (SIGHUP): a plain background job ends, a ``nohup`` job or
one that left the group with ``setsid`` keeps running. A timeout still kills the whole group,
``nohup`` jobs included. Every remote process carries the test's marker (``--env``), which the
``mark`` fixture kills at teardown.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Client, Marker

GONE_WITHIN = 5.0


def test_nohup_job_outlives_the_command(client: Client, mark: Marker, tmp_path: Path) -> None:
    log = tmp_path / "nohup.log"
    started = time.monotonic()
    done = client.run(f"nohup sh -c 'sleep 1; echo alive; sleep 300' > {log} 2>&1 & echo ok",
                      opts=mark.opts)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"ok\n"
    assert time.monotonic() - started < 10
    mark.wait_for(1)
    time.sleep(2)
    assert mark.processes(), "the nohup job was killed when the command returned"
    assert b"alive" in log.read_bytes()


def test_setsid_job_outlives_the_command(client: Client, mark: Marker) -> None:
    done = client.run("setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo ok",
                      opts=mark.opts)
    assert done.returncode == 0, done.stderr
    mark.wait_for(1)
    time.sleep(1.5)
    assert mark.processes(), "the setsid job was killed when the command returned"


def test_plain_background_job_gets_sighup(client: Client, mark: Marker, tmp_path: Path) -> None:
    """The hang-up is SIGHUP (a job's trap sees it), and a job that does not catch it ends."""
    seen = tmp_path / "seen"
    done = client.run(f"sh -c 'trap \"echo HUP > {seen}; exit 0\" HUP; "
                      f"while :; do sleep 0.1; done' > /dev/null 2>&1 & "
                      f"sleep 300 > /dev/null 2>&1 & sleep 0.5; echo ok", opts=mark.opts)
    assert done.returncode == 0, done.stderr
    assert mark.survivors(GONE_WITHIN) == []
    assert seen.read_text() == "HUP\n"


def test_job_ignoring_sighup_on_the_pipes_does_not_hold_the_command(
    client: Client, mark: Marker
) -> None:
    """A job that ignores the hang-up but kept the output pipes is left running; the command
    still ends after the grace period instead of waiting for the job."""
    started = time.monotonic()
    done = client.run("nohup sleep 300 & echo ok", opts=mark.opts)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"ok\n"
    assert time.monotonic() - started < 10
    assert mark.processes(), "the nohup job was killed"


def test_timeout_still_kills_a_nohup_job(client: Client, mark: Marker) -> None:
    done = client.run("nohup sleep 300 > /dev/null 2>&1 & sleep 300",
                      opts=[*mark.opts, "--timeout", "1"])
    assert done.returncode == 124
    assert mark.survivors(GONE_WITHIN) == []
