"""The shell API: ``Connection.line_shell`` (LineShell) and ``Connection.shell`` (ShellProcess),
against a real ``tether serve``."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

import tether
from support import ServeProcess
from tether.client.api import LineShell, ShellProcess
from tether.errors import ConnectionClosed, PermissionDenied

from .conftest import Identities
from .helpers import HOST, PROMPT, SETTLE, yes_running

TIMEOUT = 30.0


async def read_until(proc: ShellProcess, needle: bytes, timeout: float = TIMEOUT) -> bytes:
    """Output of a pty shell up to and including ``needle``."""
    seen = bytearray()

    async def reading() -> bytes:
        async for channel, data in proc:
            assert channel == 1  # a terminal has one output channel
            start = max(0, len(seen) - len(needle))
            seen.extend(data)
            if seen.find(needle, start) >= 0:
                return bytes(seen)
        raise AssertionError(f"the shell ended before {needle!r}: {bytes(seen[-2000:])!r}")

    return await asyncio.wait_for(reading(), timeout)


async def test_line_shell_keeps_state_and_separates_commands(api: tether.Connection) -> None:
    async with await api.line_shell() as sh:
        assert (await sh.run("cd /tmp")).status == 0
        assert (await sh.run("pwd")).stdout == b"/tmp\n"
        await sh.run("X=5; export Y=6")
        r = await sh.run("echo $X; sh -c 'echo $Y'")
        assert (r.stdout, r.stderr, r.status) == (b"5\n6\n", b"", 0)
        r = await sh.run("echo out; echo err >&2; exit_with() { return $1; }; exit_with 9")
        assert (r.stdout, r.stderr, r.status) == (b"out\n", b"err\n", 9)
        r = await sh.run("exit_with 4")  # functions persist too
        assert r.status == 4
        r = await sh.run("printf x; printf e >&2")
        assert (r.stdout, r.stderr, r.status) == (b"x", b"e", 0)
        r = await sh.run("printf y")  # not merged with the previous command's output
        assert (r.stdout, r.stderr) == (b"y", b"")
        r = await sh.run("printf '\\n\\n'; printf '\\n' >&2")  # newlines are output, too
        assert (r.stdout, r.stderr) == (b"\n\n", b"\n")
        r = await sh.run("cat; echo after")
        assert (r.stdout, r.status) == (b"after\n", 0)
        assert (await sh.run("false")).status == 1
        assert (await sh.run("sh -c 'kill -9 $$'")).status == 137
        assert (await sh.run("( exit 255 )")).status == 255
        assert await sh.close() == 255  # end of input: the last command's status


async def test_line_shell_exit(api: tether.Connection) -> None:
    async with await api.line_shell() as sh:
        assert (await sh.run("echo hi")).stdout == b"hi\n"
        r = await sh.run("echo bye; exit 3")
        assert (r.stdout, r.status) == (b"bye\n", 3)
        assert sh.exit is not None and sh.exit.status == 3
        with pytest.raises(ConnectionClosed):
            await sh.run("echo again")
        assert await sh.close() == 3


async def test_line_shell_large_output_is_complete_and_exact(api: tether.Connection) -> None:
    expected = "".join(f"{i}\n" for i in range(1, 200_001)).encode()
    async with await api.line_shell() as sh:
        r = await sh.run("seq 1 200000")
        assert r.status == 0 and r.stderr == b""
        assert len(r.stdout) == len(expected) and r.stdout == expected
        r = await sh.run("seq 1 200000 >&2; printf tail")
        assert r.stderr == expected and r.stdout == b"tail"
        r = await sh.run("head -c 3000000 /dev/zero | tr '\\0' '\\n'; echo end")
        assert r.stdout == b"\n" * 3_000_000 + b"end\n"  # newline runs never hide a marker
        r = await sh.run("echo next")
        assert (r.stdout, r.status) == (b"next\n", 0)


async def test_line_shells_are_independent(api: tether.Connection) -> None:
    async with await api.line_shell() as a, await api.line_shell(env={"WHO": "b"}) as b:
        await a.run("cd /tmp; WHO=a")
        r_a, r_b = await asyncio.gather(a.run("echo $WHO $PWD"), b.run("echo $WHO"))
        assert r_a.stdout == b"a /tmp\n" and r_b.stdout == b"b\n"
        # concurrent runs on one shell take turns, each with its own result
        results = await asyncio.gather(*(a.run(f"echo {i}; exit_{i} 2>/dev/null; (exit {i})")
                                         for i in range(20)))
        assert [(r.stdout, r.status) for r in results] == [
            (f"{i}\n".encode(), i) for i in range(20)]


async def test_line_shell_cancelled_run_does_not_shift_results(api: tether.Connection) -> None:
    """A run abandoned by its caller (a timeout) must not hand its output and status to the
    next run."""
    async with await api.line_shell() as sh:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sh.run("sleep 1; echo late; exit_ 2>/dev/null; false"), 0.2)
        r = await sh.run("echo now")
        assert (r.stdout, r.status) == (b"now\n", 0)
        r = await sh.run("echo then")
        assert (r.stdout, r.status) == (b"then\n", 0)


async def open_pty(api: tether.Connection, rows: int = 24, cols: int = 80) -> ShellProcess:
    proc = await api.shell(rows=rows, cols=cols)
    await read_until(proc, PROMPT.encode())
    return proc


async def test_pty_shell_resize(api: tether.Connection) -> None:
    proc = await open_pty(api, rows=24, cols=80)
    await proc.write(b"stty size\r")
    await read_until(proc, b"\r\n24 80\r\n")
    await proc.resize(50, 132)
    await proc.write(b"stty size\r")
    await read_until(proc, b"\r\n50 132\r\n")
    await proc.write(b"exit 6\r")
    assert (await asyncio.wait_for(proc.wait(), TIMEOUT)).status == 6


async def test_put_while_a_pty_shell_is_open(api: tether.Connection, server: ServeProcess,
                                             tmp_path: Path) -> None:
    proc = await open_pty(api)
    await proc.write(b"cd /tmp; echo one''1\r")
    await read_until(proc, b"one1\r\n")
    local = tmp_path / "payload.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    local.write_bytes(data)
    name = f"shell-put-{os.getpid()}-{time.monotonic_ns()}.bin"
    await asyncio.wait_for(api.put(local, name), 2 * SETTLE)  # a loaded machine: be patient
    assert (server.root / name).read_bytes() == data
    await proc.write(b"echo $PWD two''2\r")  # the shell lives on, in its own state
    # Wait for the next prompt, not just the output: a Ctrl-D typed while bash is still between
    # commands meets a terminal in canonical mode, which swallows it, and bash never exits.
    await read_until(proc, b"/tmp two2\r\n" + PROMPT.encode(), timeout=SETTLE)
    await proc.write(b"\x04")
    assert (await asyncio.wait_for(proc.wait(), SETTLE)).status == 0


async def test_flood_does_not_stall_keystrokes(api: tether.Connection,
                                               server: ServeProcess) -> None:
    """``yes`` fills every buffer while nobody reads; Ctrl-C still gets through (``yes`` ends
    before its output is read again), and a command typed after it answers promptly."""
    proc = await open_pty(api)
    await proc.write(b"yes\r")
    await read_until(proc, b"y\r\ny\r\ny\r\n")
    assert yes_running(server)
    await asyncio.sleep(1.5)  # read nothing: the window and the pty fill up
    await asyncio.wait_for(proc.write(b"\x03"), SETTLE)  # not queued behind output
    deadline = time.monotonic() + SETTLE
    while yes_running(server):  # still reading nothing
        assert time.monotonic() < deadline, "Ctrl-C did not stop yes"
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.wait_for(proc.write(b"echo mark''er\r"), SETTLE)
    seen = await read_until(proc, b"\r\nmarker\r\n", timeout=2 * SETTLE)
    elapsed = time.monotonic() - started
    assert elapsed < SETTLE, elapsed  # about 0.05 s unloaded
    assert len(seen) < 64 * 1024 * 1024  # bounded by the window, not endless: yes stopped
    await proc.write(b"exit 0\r")
    assert (await asyncio.wait_for(proc.wait(), TIMEOUT)).status == 0


async def test_signal_and_command_in_a_pty(api: tether.Connection) -> None:
    proc = await api.shell("tty; echo TERM=$TERM; exec sleep 100", term="vt100")
    out = await read_until(proc, b"TERM=vt100\r\n")
    assert b"/dev/pts/" in out
    await proc.signal("TERM")
    done = await asyncio.wait_for(proc.wait(), TIMEOUT)
    assert done.signal == 15 and done.status == 128 + 15


async def test_no_shell_permission(server: ServeProcess, ids: Identities) -> None:
    async with tether.connect(HOST, server.port, home=ids.exec_home, accept_new=True) as conn:
        assert (await conn.run("echo allowed")).stdout == b"allowed\n"  # exec still works
        proc = await conn.shell()
        with pytest.raises(PermissionDenied, match="shell"):
            await asyncio.wait_for(proc.wait(), TIMEOUT)
        sh: LineShell = await conn.line_shell()
        with pytest.raises(PermissionDenied, match="shell"):
            await asyncio.wait_for(sh.run("echo hi"), TIMEOUT)
        assert (await conn.run("echo still")).stdout == b"still\n"


async def test_pty_command_output_is_complete(api: tether.Connection) -> None:
    """The output of a program in a terminal arrives whole before its exit, every time, also
    from a program that is done before the server starts reading (a terminal reports its end as
    an error, EIO, which must not discard the output still buffered)."""
    for i in range(40):
        lines = 0 if i % 2 else 3000 + i
        proc = await api.shell(["sh", "-c", f"seq 1 {lines}; printf 'end{i}'; exit {i}"])
        chunks = [data async for _, data in proc]
        done = await asyncio.wait_for(proc.wait(), TIMEOUT)
        out = b"".join(chunks)
        assert done.status == i
        assert out.endswith(f"end{i}".encode()), (i, out[-100:])
        assert out.count(b"\r\n") == lines


async def test_large_paste_into_a_pty(api: tether.Connection) -> None:
    """Keystrokes are flow-controlled too: 2 MB typed into ``wc -c`` arrive whole."""
    proc = await open_pty(api)
    # type only once echo is off: keys typed before `stty -echo` ran would be echoed (a race
    # a loaded machine loses), and the echo would run into wc's count
    await proc.write(b"stty -echo; echo echo-off; wc -c; stty echo\r")
    await read_until(proc, b"\r\necho-off\r\n")
    line = b"x" * 99 + b"\r"  # the terminal turns CR into LF: 100 bytes a line
    typed = asyncio.ensure_future(proc.write(line * 20_000 + b"\x04"))
    out = await read_until(proc, PROMPT.encode(), timeout=60.0)
    await asyncio.wait_for(typed, TIMEOUT)
    assert out.split()[-2:] == [b"2000000", PROMPT.strip().encode()]
    await proc.write(b"exit\r")
    assert (await asyncio.wait_for(proc.wait(), TIMEOUT)).status == 0
