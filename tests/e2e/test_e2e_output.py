"""Output end to end: a GiB in bounded memory, heavy stderr, binary bytes, and encodings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

import pexpect
import psutil
import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Client, ServerFactory
    from support import ServeProcess
    from tether.client.api import Connection

MIB = 1024 * 1024
GIB = 1024 * MIB
RSS_LIMIT = 64 * MIB
TEXT = "中文输出"
GBK = TEXT.encode("gbk")
UTF8 = TEXT.encode("utf-8")


def printf_of(data: bytes) -> str:
    """A shell command printing ``data`` and a newline, with octal escapes only."""
    return "printf '" + "".join(f"\\{byte:03o}" for byte in data) + "\\n'"


def binary_payload() -> bytes:
    """Every byte value, invalid UTF-8 (lone continuation, overlong, surrogate, truncated),
    NULs and CRs, repeated past a few frame sizes."""
    invalid = b"\x80\xbf\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xff\xfe\xe2\x82\r\n\x00"
    block = bytes(range(256)) + invalid + GBK
    return block * 20_000 + b"\xe4\xb8"  # ends in the middle of a UTF-8 sequence


# --- a GiB through the CLI ----------------------------------------------------------------------


@dataclass
class RssSampler:
    """Samples the RSS of some processes every ``interval`` s in a thread; keeps the peaks."""

    pids: dict[str, int]
    interval: float = 0.05
    peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        while not self._stop.is_set():
            for name, proc in procs.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak.get(name, 0), proc.memory_info().rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def count_bytes(pipe: IO[bytes]) -> tuple[int, int]:
    """Read a pipe to EOF: (bytes read, how many of them were not NUL)."""
    total = nonzero = 0
    fd = pipe.fileno()
    while chunk := os.read(fd, MIB):
        total += len(chunk)
        nonzero += len(chunk) - chunk.count(0)
    return total, nonzero


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gib_of_stdout_arrives_whole_in_bounded_memory(
    client: Client, server: ServeProcess, tmp_path: Path
) -> None:
    with (tmp_path / "stderr").open("wb") as err:
        proc = client.popen(f"head -c {GIB} /dev/zero", stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    with RssSampler({"client": proc.pid, "server": server.pid}) as rss:
        started = time.monotonic()
        total, nonzero = count_bytes(proc.stdout)
        elapsed = time.monotonic() - started
        status = proc.wait(60)
    peaks = {name: round(value / MIB, 1) for name, value in rss.peak.items()}
    print(f"\n1 GiB: {elapsed:.2f} s, {GIB / MIB / elapsed:.0f} MiB/s; peak RSS MiB {peaks} "
          f"over {rss.samples} samples")
    assert (status, total, nonzero) == (0, GIB, 0), (tmp_path / "stderr").read_bytes()
    assert rss.samples >= 5
    assert rss.peak["client"] < RSS_LIMIT, peaks
    assert rss.peak["server"] < RSS_LIMIT, peaks


# --- stderr, binary -----------------------------------------------------------------------------


def test_cli_lots_of_stderr_only_does_not_deadlock(client: Client) -> None:
    size = 20_000_000
    done = client.run(f"head -c {size} /dev/zero | tr '\\0' e >&2", timeout=120)
    assert done.returncode == 0
    assert done.stdout == b""
    assert len(done.stderr) == size
    assert done.stderr == b"e" * size


async def test_api_lots_of_stderr_only_does_not_deadlock(conn: Connection) -> None:
    size = 20_000_000
    result = await conn.run(f"head -c {size} /dev/zero >&2")
    assert (result.status, result.stdout, len(result.stderr)) == (0, b"", size)


def test_cli_heavy_stdout_and_stderr_at_once(client: Client) -> None:
    command = ("head -c 10000000 /dev/zero | tr '\\0' o & "
               "head -c 10000000 /dev/zero | tr '\\0' e >&2; wait")
    done = client.run(command, timeout=120)
    assert done.returncode == 0
    assert done.stdout == b"o" * 10_000_000
    assert done.stderr == b"e" * 10_000_000


@pytest.fixture
def payload_file(server: ServeProcess) -> Path:
    path = server.root / f"payload-{os.getpid()}.bin"
    path.write_bytes(binary_payload())
    return path


def test_cli_binary_output_is_byte_identical(client: Client, payload_file: Path) -> None:
    done = client.run(f"cat {payload_file}; cat {payload_file} >&2")
    assert done.returncode == 0
    assert done.stdout == payload_file.read_bytes()
    assert done.stderr == payload_file.read_bytes()


def test_cli_binary_argv_output_is_byte_identical(client: Client, payload_file: Path) -> None:
    done = client.run("cat", str(payload_file))
    assert done.stdout == payload_file.read_bytes()


async def test_api_binary_output_is_byte_identical(conn: Connection, payload_file: Path) -> None:
    result = await conn.run(["cat", str(payload_file)])
    assert result.stdout == payload_file.read_bytes()


# --- encodings ----------------------------------------------------------------------------------


def on_terminal(argv: list[str], env: dict[str, str]) -> tuple[str, int]:
    """Run a command in a real pseudo-terminal: (what the terminal shows, exit status)."""
    child = pexpect.spawn(argv[0], argv[1:], env=env, timeout=60, use_poll=True)
    try:
        child.expect(pexpect.EOF)
        shown = (child.before or b"").decode("utf-8", "replace")
    finally:
        child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return shown, child.exitstatus


@pytest.fixture
def gbk_client(client: Client, make_server: ServerFactory) -> Client:
    """The shared client, against a server started with ``--encoding gbk``."""
    return client.other(server=make_server("--encoding", "gbk"))


def test_gbk_output_is_shown_as_text_on_a_terminal(gbk_client: Client) -> None:
    shown, status = on_terminal(gbk_client.argv(printf_of(GBK)), gbk_client.env())
    assert status == 0
    assert TEXT in shown


def test_gbk_stderr_is_shown_as_text_on_a_terminal(gbk_client: Client) -> None:
    shown, status = on_terminal(gbk_client.argv(printf_of(GBK) + " >&2"), gbk_client.env())
    assert status == 0
    assert TEXT in shown


def test_gbk_output_passes_raw_through_a_pipe(gbk_client: Client) -> None:
    done = gbk_client.run(printf_of(GBK))
    assert (done.returncode, done.stdout) == (0, GBK + b"\n")


def test_encoding_option_overrides_the_servers_on_a_terminal(gbk_client: Client) -> None:
    argv = gbk_client.argv(printf_of(GBK), opts=["--encoding", "latin-1"])
    shown, status = on_terminal(argv, gbk_client.env())
    assert status == 0
    assert GBK.decode("latin-1") in shown
    assert TEXT not in shown


async def test_api_reports_the_servers_encoding(gbk_client: Client) -> None:
    async with gbk_client.connect() as conn:
        result = await conn.run(printf_of(GBK))
    assert conn.server.encoding.lower() == "gbk"
    assert (result.stdout, result.text) == (GBK + b"\n", TEXT + "\n")


def test_utf8_server_output_on_a_terminal(client: Client) -> None:
    shown, status = on_terminal(client.argv(printf_of(UTF8)), client.env())
    assert status == 0
    assert TEXT in shown


def test_encoding_option_transcodes_into_a_pipe(client: Client) -> None:
    """``--encoding`` overrides the (UTF-8) server's encoding, into pipes too (README)."""
    done = client.run(printf_of(GBK), opts=["--encoding", "gbk"])
    assert (done.returncode, done.stdout) == (0, UTF8 + b"\n")


def test_unknown_encoding_option_is_a_clear_error(client: Client) -> None:
    done = client.run("echo hi", opts=["--encoding", "no-such-codec"])
    assert done.returncode not in (0, 255)
    assert b"no-such-codec" in done.stderr
    assert done.stderr.count(b"\n") == 1
