"""``tether put`` and ``tether get``: scp's argument conventions, a rich progress bar on a
terminal, a JSON summary on request (when the transfer fails too), a note whenever a transfer
resumed, and one line on Ctrl-C saying the partial files are kept for a resume."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from tether.cli.escape import printable
from tether.cli.shared import resume_note, skipped_note, split_remote
from tether.cli.transfer_options import TransferOptions
from tether.client.api import connect
from tether.client.transfer_base import TransferResult
from tether.errors import BadRequest, TetherError
from tether.malloc import tune_for_bulk


class RichProgress:
    """Per-file and total bars with rate and ETA (only built when a terminal shows them)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}", justify="left", markup=False), BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=_stderr_console(),
            transient=False,
        )
        self.all = self.bar.add_task("total", total=None)
        self.files: dict[str, Any] = {}
        self.sized = False  # whether total() knew the bytes (a single get learns them later)
        self.learned = 0

    def total(self, files: int, size: int) -> None:
        self.sized = size > 0 or files == 0
        self.bar.update(self.all, total=size or None,
                        description=f"total ({files} file{'' if files == 1 else 's'})")

    def file_started(self, name: str, size: int, offset: int) -> None:
        label = printable(name)  # a file system's name: never markup, never raw controls
        self.files[name] = self.bar.add_task(label[-40:], total=size, completed=offset)
        if not self.sized:  # the total is what the files have said so far
            self.learned += size
            self.bar.update(self.all, total=self.learned or None)
        self.bar.advance(self.all, offset)

    def advanced(self, name: str, size: int) -> None:
        self.bar.advance(self.files[name], size)
        self.bar.advance(self.all, size)

    def file_done(self, name: str) -> None:
        task = self.files.pop(name, None)
        if task is not None and len(self.bar.tasks) > 6:
            self.bar.remove_task(task)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr, force_terminal=sys.stderr.isatty() or None)


def _report(result: TransferResult, opts: TransferOptions) -> None:
    for f in result.resumed:
        click.echo(resume_note(f.path, f.resumed_from), err=True)
    for link in result.skipped:
        click.echo(skipped_note(link.path, link.target), err=True)
    if opts.json:
        click.echo(json.dumps({
            "ok": True,
            "error": None,
            "files": result.file_count,
            "bytes": result.bytes,
            "seconds": round(result.seconds, 6),
            "resumed": [{"path": f.path, "at": f.resumed_from} for f in result.resumed],
            "skipped": [asdict(link) for link in result.skipped],
            "entries": [asdict(f) for f in result.entries],
        }))


def _report_failure(exc: BaseException, opts: TransferOptions) -> None:
    """``--json`` prints JSON whatever happened (a script parses stdout either way); the
    error's line still goes to stderr through the exit policy."""
    if opts.json:
        click.echo(json.dumps({"ok": False, "error": str(exc) or type(exc).__name__,
                               "files": 0, "bytes": 0, "resumed": [], "entries": []}))


INTERRUPTED = ("tether: interrupted: partial files are kept; run the same command again to "
               "resume")


def _one_host(host: str, opts: TransferOptions, upload: bool, sources: list[str],
              dest: str) -> int:
    """One host's put or get, reported; failures as JSON too with --json; Ctrl-C as one line
    (then 130, by the exit policy)."""
    try:
        result = asyncio.run(_transfer(host, opts, upload, sources, dest))
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        raise
    except (TetherError, OSError) as exc:
        _report_failure(exc, opts)
        raise
    _report(result, opts)
    return 0


async def _transfer(host: str, opts: TransferOptions, upload: bool, sources: list[str],
                    dest: str) -> TransferResult:
    show = opts.progress or (sys.stderr.isatty() and not opts.json)
    progress = RichProgress() if show else None
    from tether.cli.shared import confirm_on_tty

    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(host, opts.port, home=opts.home, accept_new=opts.accept_new,
                       plaintext=opts.plaintext, confirm=confirm,
                       keepalive=opts.keepalive, timeout=opts.connect_timeout,
                       mux=opts.mux or "existing", mux_persist=opts.mux_persist,
                       via=opts.via) as conn:
        kwargs: dict[str, Any] = dict(recursive=opts.recursive, force=opts.force,
                                      rename=opts.rename, resume=opts.resume, progress=progress,
                                      safe_links=opts.safe_links)
        if progress is not None:
            progress.bar.start()
        try:
            if upload:
                return await conn.put([Path(s) for s in sources], dest, **kwargs)
            return await conn.get(sources, Path(dest), **kwargs)
        finally:
            if progress is not None:
                progress.bar.stop()


def _fleet_target(host: str, opts: TransferOptions) -> bool:
    from tether.cli.targets import wants_fleet

    return wants_fleet(host, opts.home)


def _one(host: str, opts: TransferOptions) -> tuple[str, TransferOptions]:
    """An inventory name becomes its address, port and keepalive; anything else stays as is."""
    from tether.cli.fleet import host_mux
    from tether.cli.targets import one_host

    mux = host_mux(host, opts.home, opts.mux)
    address, port, keepalive = one_host(host, opts.home, opts.port, opts.keepalive)
    return address, dataclasses.replace(opts, port=port, keepalive=keepalive, mux=mux)


def _fleet_transfer(spec: str, upload: bool, sources: list[str], dest: str,
                    opts: TransferOptions) -> int:
    from tether.cli.fleet import transfer_fleet

    return transfer_fleet(spec, upload, sources, dest, opts)


def put_main(sources: tuple[str, ...], target: str, opts: TransferOptions) -> int:
    """``tether put``'s exit status; errors propagate to :mod:`tether.cli.policy`."""
    tune_for_bulk()
    host, remote = split_remote(target)
    if _fleet_target(host, opts):
        return _fleet_transfer(host, True, list(sources), remote, opts)
    host, opts = _one(host, opts)
    return _one_host(host, opts, True, list(sources), remote)


def get_main(args: tuple[str, ...], opts: TransferOptions) -> int:
    """``tether get``'s exit status; errors propagate to :mod:`tether.cli.policy`."""
    tune_for_bulk()
    if len(args) < 2:
        raise BadRequest("usage: tether get HOST:REMOTE... LOCAL")
    pairs = [split_remote(a) for a in args[:-1]]
    hosts = {h for h, _ in pairs}
    if len(hosts) == 1 and _fleet_target(next(iter(hosts)), opts):
        return _fleet_transfer(pairs[0][0], False, [p for _, p in pairs], args[-1], opts)
    if len(hosts) != 1:
        raise BadRequest("all sources of one get must be on the same host")
    host, opts = _one(hosts.pop(), opts)
    return _one_host(host, opts, False, [p for _, p in pairs], args[-1])
