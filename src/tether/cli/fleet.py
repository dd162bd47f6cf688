"""``tether run|put|get`` across many hosts: prefixed or grouped output, a summary, an exit code.

Chosen when the target has fleet syntax (``@group``, ``a,b``) or names an inventory host (or
``--json``/``--group-output`` asks for per-host results); a plain single host keeps the one-host
path of ``cli/run.py`` and ``cli/transfer.py`` unchanged. The options are in cli/main.py, so
this module loads only when a target means several hosts. Errors propagate to the exit policy
(:mod:`tether.cli.policy`); the status a fleet's results mean is decided here
(:func:`exit_status`), as a remote command's status is by the run policy.

Output: each complete line as it arrives, prefixed ``NAME | `` (coloured per host on a terminal),
stdout lines to stdout and stderr lines to stderr; or with ``--group-output`` each host's output
in one piece when it finishes. Then a summary table on stderr. stdin is not forwarded to several
hosts. Exit status: 0 if every host succeeded; otherwise 255 if any host could not be reached,
authenticated or trusted, else 124 if any timed out, else 1.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import click

from tether.cli.escape import printable
from tether.defaults import CONNECT_TIMEOUT, DEFAULT_PARALLEL

if TYPE_CHECKING:
    from tether.cli.shared import RunOptions
    from tether.cli.transfer_options import TransferOptions
    from tether.client.fleet import Fleet, FleetResult, HostResult
    from tether.inventory import Target

COLOURS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
PREFIX_WIDTH = 24
CONNECTION_KINDS = ("unreachable", "unauthorized", "untrusted")


@dataclass
class FleetOptions:
    parallel: int = DEFAULT_PARALLEL
    host_timeout: float | None = None
    group_output: bool = False
    json: bool = False
    keepalive: float = 0.0  # seconds of a server's silence before a ping (0: off)
    connect_timeout: float = CONNECT_TIMEOUT  # connect + TLS + welcome, per host


def host_mux(host: str, home: str | None, given: str | None) -> str | None:
    """``--mux`` if given, else the inventory host's ``mux`` setting, else None (meaning
    ``existing``: a running mux is used, none is started; both parsers leave it so for an
    address)."""
    if given is not None:
        return given
    from tether.inventory import InventoryError, is_address, load, names_inventory_host

    try:
        if not names_inventory_host(host, home):
            return None
    except InventoryError:
        if is_address(host):
            return None  # an address needs no inventory (one_host warns about it, once)
        raise
    entry = load(home).hosts.get(host)
    return None if entry is None else entry.mux


# --- output -------------------------------------------------------------------------------------


def _colour_on(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Prefixer:
    """Whole lines with a host prefix; a partial line waits for its end (or the host's)."""

    def __init__(self, targets: list[Target]) -> None:
        width = min(PREFIX_WIDTH, max((len(t.name) for t in targets), default=0))
        self.streams: dict[int, tuple[BinaryIO, bool]] = {
            1: (sys.stdout.buffer, _colour_on(sys.stdout)),
            2: (sys.stderr.buffer, _colour_on(sys.stderr)),
        }
        self.prefix: dict[tuple[str, int], bytes] = {}
        for i, target in enumerate(targets):
            label = target.name.ljust(width)
            for channel, (_, colour) in self.streams.items():
                text = f"\x1b[{COLOURS[i % len(COLOURS)]}m{label}\x1b[0m | " if colour \
                    else f"{label} | "
                self.prefix[target.name, channel] = text.encode()
        self.pending: dict[tuple[str, int], bytes] = {}

    def output(self, target: Target, channel: int, data: bytes) -> None:
        key = (target.name, channel if channel in self.streams else 2)
        lines = (self.pending.pop(key, b"") + data).split(b"\n")
        if lines[-1]:
            self.pending[key] = lines[-1]
        if len(lines) > 1:
            self._write(key, lines[:-1])

    def done(self, result: HostResult) -> None:
        for channel in self.streams:
            rest = self.pending.pop((result.name, channel), None)
            if rest:
                self._write((result.name, channel), [rest])

    def _write(self, key: tuple[str, int], lines: list[bytes]) -> None:
        stream, _ = self.streams[key[1]]
        prefix = self.prefix[key]
        stream.write(b"".join(prefix + line + b"\n" for line in lines))
        stream.flush()


def print_grouped(result: HostResult) -> None:
    """One host's whole output, under a header line, when it finishes."""
    head = f"=== {result.name}: {status_text(result)} ({result.duration:.2f} s) ==="
    if _colour_on(sys.stdout):
        head = f"\x1b[1m{head}\x1b[0m"
    out = sys.stdout.buffer
    out.write(head.encode() + b"\n" + result.stdout)
    if result.stdout and not result.stdout.endswith(b"\n"):
        out.write(b"\n")
    out.flush()
    if result.stderr:
        sys.stderr.buffer.write(result.stderr if result.stderr.endswith(b"\n")
                                else result.stderr + b"\n")
        sys.stderr.flush()


def status_text(result: HostResult) -> str:
    if result.ok:
        return "ok"
    if result.kind == "failed":
        return f"exit {result.status}"
    return result.kind


def print_summary(results: FleetResult) -> None:
    """The table at the end, on stderr: host, status, duration, and the error if any."""
    colour = _colour_on(sys.stderr)
    width = max([4, *(len(printable(r.name)) for r in results)])
    lines = [f"{'HOST'.ljust(width)}  {'STATUS':<12}  {'TIME':>8}  ERROR"]
    for r in results:
        status = status_text(r).ljust(12)
        if colour:
            status = f"\x1b[{32 if r.ok else 31}m{status}\x1b[0m"
        # its first line (by newlines only: a CR or U+2028 inside it is shown escaped)
        error = r.error.split("\n")[0][:120] if r.error and r.kind != "failed" else ""
        name = printable(r.name).ljust(width)
        lines.append(f"{name}  {status}  {r.duration:7.2f}s  {printable(error)}".rstrip())
    kinds = Counter(r.kind for r in results.failed)
    detail = f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})" if kinds else ""
    lines.append(f"{len(results)} host{'' if len(results) == 1 else 's'}: "
                 f"{len(results.succeeded)} ok, "
                 f"{len(results.failed)} failed{detail}")
    click.echo("\n".join(lines), err=True)


def exit_status(results: FleetResult) -> int:
    failed = results.failed
    if not failed:
        return 0
    if any(r.kind in CONNECTION_KINDS for r in failed):
        return 255
    if any(r.kind == "timeout" for r in failed):
        return 124
    return 1


def print_json(results: FleetResult) -> None:
    import json

    click.echo(json.dumps({
        "ok": len(results.succeeded), "failed": len(results.failed),
        "hosts": [r.to_dict() for r in results],
    }))


# --- commands -----------------------------------------------------------------------------------


def _fleet(spec: str, home: str | None, port: int, accept_new: bool, plaintext: bool,
           fopts: FleetOptions) -> Fleet:
    from tether.client.fleet import connect_many

    fleet = connect_many(spec, port=port, home=home, accept_new=accept_new, plaintext=plaintext,
                         parallel=fopts.parallel, timeout=fopts.host_timeout,
                         connect_timeout=fopts.connect_timeout,
                         keep_connections=False)
    if fopts.host_timeout is not None:  # said on the command line: it beats the inventory
        fleet.targets = [t._replace(timeout=fopts.host_timeout)
                         for t in fleet.targets]
    if fopts.keepalive:  # said on the command line: it beats the inventory
        fleet.targets = [t._replace(keepalive=fopts.keepalive) for t in fleet.targets]
    if len(fleet.targets) == 1 and sys.stdin.isatty():
        from tether.cli.shared import confirm_on_tty

        fleet.confirm = confirm_on_tty  # one host: ask like ssh does; many: report instead
    return fleet


def _finish(results: FleetResult, as_json: bool) -> int:
    if as_json:
        print_json(results)
    print_summary(results)
    return exit_status(results)


class Finished:
    """Which hosts have finished, as they finish: what Ctrl-C reports (the fleet's own results
    are lost with the interrupted run)."""

    def __init__(self) -> None:
        self.targets: list[Target] = []
        self.results: list[HostResult] = []

    def watch(self, on_done: Callable[[HostResult], None] | None
              ) -> Callable[[HostResult], None]:
        """``on_done`` that also records each finished host."""
        def done(result: HostResult) -> None:
            self.results.append(result)
            if on_done is not None:
                on_done(result)
        return done

    def report(self) -> None:
        """After Ctrl-C, on stderr: the finished hosts' summary, then one line naming the hosts
        that did not finish (their commands are killed as their connections close)."""
        from tether.client.fleet import FleetResult

        order = {t.name: i for i, t in enumerate(self.targets)}
        done = sorted(self.results, key=lambda r: order.get(r.name, len(order)))
        if done:
            print_summary(FleetResult(done))
        names = {r.name for r in done}
        unfinished = [t.name for t in self.targets if t.name not in names]
        shown = ", ".join(unfinished[:20]) + (f" and {len(unfinished) - 20} more"
                                               if len(unfinished) > 20 else "")
        click.echo(f"tether: interrupted: {len(done)} of {len(self.targets)} hosts finished"
                   + (f"; not finished: {shown}" if unfinished else ""), err=True)


def _main(work: Callable[[], Any], finished: Finished) -> int:
    """Run ``work`` (a coroutine factory); its exit status. Errors go to the exit policy;
    Ctrl-C reports which hosts finished, then exits 130 (the policy's)."""
    import asyncio

    try:
        return int(asyncio.run(work()))
    except KeyboardInterrupt:
        finished.report()
        raise


def run_fleet(opts: RunOptions, fopts: FleetOptions) -> int:
    """``tether run TARGET -- COMMAND`` over every host the target means."""
    from tether.errors import BadRequest

    finished = Finished()

    async def work() -> int:
        if not opts.command or not any(a.strip() for a in opts.command):
            raise BadRequest("empty command: give a command after the hosts, "
                             "e.g. tether run @web -- uptime")
        cmd: str | list[str] = opts.command[0] if len(opts.command) == 1 else opts.command
        async with _fleet(opts.host, opts.home, opts.port, opts.accept_new, opts.plaintext,
                          fopts) as fleet:
            finished.targets = fleet.targets
            streaming = not (fopts.group_output or fopts.json)
            prefixer = Prefixer(fleet.targets) if streaming else None
            results = await fleet.run(
                cmd, cwd=opts.cwd, env=opts.env, remote_timeout=opts.timeout,
                on_output=prefixer.output if prefixer else None,
                on_done=finished.watch(prefixer.done if prefixer else (
                    print_grouped if fopts.group_output and not fopts.json else None)),
                capture=not streaming,
            )
        return _finish(results, fopts.json)

    return _main(work, finished)


def note_resumed(prefixer: Prefixer, result: HostResult) -> None:
    """One prefixed stderr line per file a host resumed, as the one-host path prints it."""
    from tether.cli.shared import resume_note, skipped_note

    for path, offset in result.resumed:
        prefixer.output(result.target, 2, resume_note(path, offset).encode() + b"\n")
    for link in result.transfer.skipped if result.transfer is not None else []:
        prefixer.output(result.target, 2, skipped_note(link.path, link.target).encode() + b"\n")


def transfer_fleet(spec: str, upload: bool, sources: list[str], dest: str,
                   opts: TransferOptions) -> int:
    """``tether put LOCAL... TARGET:REMOTE`` / ``tether get TARGET:REMOTE... LOCAL``; a get
    puts each host's files in ``LOCAL/HOST/``. Files that resumed are noted per host; there
    is no progress display (``--progress`` is refused: the summary reports every host)."""
    from tether.errors import BadRequest

    fopts = FleetOptions(parallel=opts.parallel, host_timeout=opts.host_timeout,
                         keepalive=opts.keepalive, connect_timeout=opts.connect_timeout)
    finished = Finished()

    async def work() -> int:
        if opts.progress:
            raise BadRequest("--progress shows one host's transfer; with several hosts the "
                             "summary reports each one (--json for files and bytes)")
        async with _fleet(spec, opts.home, opts.port, opts.accept_new, opts.plaintext,
                          fopts) as fleet:
            finished.targets = fleet.targets
            prefixer = Prefixer(fleet.targets)
            kw: dict[str, Any] = dict(recursive=opts.recursive, force=opts.force,
                                      rename=opts.rename, resume=opts.resume,
                                      safe_links=opts.safe_links,
                                      on_done=finished.watch(lambda r: note_resumed(prefixer, r)))
            if upload:
                results = await fleet.put(sources, dest, **kw)
            else:
                results = await fleet.get(sources, dest, **kw)
        return _finish(results, opts.json)

    return _main(work, finished)
