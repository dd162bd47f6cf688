"""``tether sync``: rsync's argument conventions (push ``SRC... HOST:DEST``, pull ``HOST:SRC...
DEST``, the trailing-slash rule), an itemized list for ``--dry-run``/``-v``, a JSON summary on
request, a progress bar on a terminal, and a push to several hosts at once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Any

from tether.cli.escape import printable as shown
from tether.cli.options import fast_sync_parse
from tether.cli.shared import split_remote
from tether.cli.targets import one_host, wants_fleet
from tether.defaults import CONNECT_TIMEOUT, DEFAULT_PARALLEL
from tether.errors import BadRequest, SourceChanged
from tether.malloc import tune_for_bulk
from tether.syncing.common import SyncResult


@dataclass
class SyncCliOptions:
    """What ``tether sync`` was asked to do (one host or a fleet)."""

    home: str | None
    port: int
    accept_new: bool
    plaintext: bool
    keepalive: float
    dry_run: bool
    delete: bool
    exclude: list[str]
    include: list[str]
    exclude_from: list[str]
    checksum: bool
    safe_links: bool
    verbose: bool
    json: bool
    progress: bool
    parallel: int
    host_timeout: float | None
    connect_timeout: float = CONNECT_TIMEOUT
    hash_cache: bool = True

    def api_kwargs(self) -> dict[str, Any]:
        return dict(checksum=self.checksum, delete=self.delete, dry_run=self.dry_run,
                    exclude=self.exclude, include=self.include, exclude_from=self.exclude_from,
                    safe_links=self.safe_links, hash_cache=self.hash_cache)


def is_remote(arg: str) -> bool:
    """rsync's rule: ``HOST:PATH`` (``[v6]:PATH``) when a colon comes before any slash."""
    if arg.startswith("["):
        return "]:" in arg
    host, sep, _ = arg.partition(":")
    return bool(sep and host and "/" not in host)


def itemized(result: SyncResult, prefix: str = "") -> list[str]:
    """One line per changed entry: the action, then the path (escaped for a terminal)."""
    return [f"{prefix}{shown(entry.action):<8} {shown(entry.path)}" for entry in result.entries]


def report(result: SyncResult, opts: SyncCliOptions) -> int:
    if opts.dry_run or opts.verbose:
        for line in itemized(result):
            print(line)
    if opts.json:
        print(json.dumps(result.to_dict()))
    if result.changed:
        first = shown(result.changed[0])
        more = f" and {len(result.changed) - 1} more" if len(result.changed) > 1 else ""
        raise SourceChanged(f"{first}{more} changed while being read and was not stored; "
                            f"run the sync again")
    return 0


def parse_fast(args: list[str]) -> tuple[list[str], str, dict[str, Any]] | None:
    """``tether sync``'s arguments (after ``sync``) as (sources, dest, option values) for the
    console script's fast path (:mod:`tether.cli.oneshot`: no click), or None for what the
    click command handles: ``--help``, an option it must word, too few words, several hosts."""
    parsed = fast_sync_parse(args)
    if parsed is None:
        return None
    words, values = parsed
    if len(words) < 2 or any(is_remote(word) and wants_fleet(split_remote(word)[0], None)
                             for word in words if not word.startswith("[")):
        return None
    values.update(parallel=DEFAULT_PARALLEL, host_timeout=None)
    return words[:-1], words[-1], values


def sync_main(sources: list[str], dest: str, values: dict[str, Any]) -> int:
    """``tether sync``'s exit status; errors propagate to :mod:`tether.cli.policy`."""
    tune_for_bulk()
    opts = SyncCliOptions(
        home=values.get("home"), port=values["port"], accept_new=values["accept_new"],
        plaintext=values["plaintext"], keepalive=values.get("keepalive") or 0.0,
        dry_run=values["dry_run"], delete=values["delete"], exclude=list(values["exclude"]),
        include=list(values["include"]), exclude_from=list(values["exclude_from"]),
        checksum=values["checksum"], safe_links=values["safe_links"],
        verbose=values["verbose"], json=values["as_json"], progress=values["progress"],
        parallel=values["parallel"], host_timeout=values["host_timeout"],
        connect_timeout=values.get("connect_timeout") or CONNECT_TIMEOUT,
        hash_cache=not values.get("no_hash_cache"))
    if is_remote(dest):
        if any(is_remote(src) for src in sources):
            raise BadRequest("tether sync copies between this machine and a host, not "
                             "between two hosts")
        host, path = split_remote(dest)
        return _push(host, sources, path, opts)
    if not all(is_remote(src) for src in sources):
        raise BadRequest("give HOST:DEST to push, or HOST:SRC... to pull (one side must be "
                         "remote)")
    pairs = [split_remote(src) for src in sources]
    hosts = {host for host, _ in pairs}
    if len(hosts) != 1:
        raise BadRequest("all sources of one sync must be on the same host")
    host = hosts.pop()
    if wants_fleet(host, opts.home):
        raise BadRequest("a pull from several hosts would merge their trees into one; pull "
                         "from one host at a time (or use tether get, which keeps them apart)")
    return _one(host, opts, [path for _, path in pairs], dest, pull=True)


def _push(host: str, sources: list[str], dest: str, opts: SyncCliOptions) -> int:
    if wants_fleet(host, opts.home):
        return sync_fleet(host, sources, dest, opts)
    return _one(host, opts, sources, dest, pull=False)


def _one(host: str, opts: SyncCliOptions, sources: list[str], dest: str, *, pull: bool) -> int:
    address, port, keepalive = one_host(host, opts.home, opts.port, opts.keepalive)
    opts = dataclasses.replace(opts, port=port, keepalive=keepalive)
    result = asyncio.run(_run(address, opts, sources, dest, pull))
    return report(result, opts)


async def _run(host: str, opts: SyncCliOptions, sources: list[str], dest: str,
               pull: bool) -> SyncResult:
    from tether.cli.shared import confirm_on_tty
    from tether.client.api import connect

    show = opts.progress or (sys.stderr.isatty() and not opts.json and not opts.dry_run)
    progress = None
    if show:
        from tether.cli.transfer import RichProgress

        progress = RichProgress()
    confirm = confirm_on_tty if sys.stdin.isatty() else None
    async with connect(host, opts.port, home=opts.home, accept_new=opts.accept_new,
                       plaintext=opts.plaintext, confirm=confirm,
                       keepalive=opts.keepalive, timeout=opts.connect_timeout) as conn:
        if progress is not None:
            progress.bar.start()
        try:
            return await conn.sync(sources, dest, pull=pull, progress=progress,
                                   **opts.api_kwargs())
        finally:
            if progress is not None:
                progress.bar.stop()


def sync_fleet(spec: str, sources: list[str], dest: str, opts: SyncCliOptions) -> int:
    """``tether sync SRC... TARGET:DEST``: the same tree pushed to every host at once; with
    ``--dry-run``/``-v`` each host's itemized lines, prefixed with its name, as it finishes."""
    from tether.cli.fleet import Finished, FleetOptions, _finish, _fleet, _main
    from tether.client.fleet import HostResult

    fopts = FleetOptions(parallel=opts.parallel, host_timeout=opts.host_timeout,
                         keepalive=opts.keepalive, connect_timeout=opts.connect_timeout)
    finished = Finished()

    def done(result: HostResult) -> None:
        if result.sync is not None and (opts.dry_run or opts.verbose):
            for line in itemized(result.sync, f"{result.name} | "):
                print(line, flush=True)

    async def work() -> int:
        if opts.progress:
            raise BadRequest("--progress shows one host's sync; with several hosts the "
                             "summary reports each one (--json for the figures)")
        async with _fleet(spec, opts.home, opts.port, opts.accept_new, opts.plaintext,
                          fopts) as fleet:
            finished.targets = fleet.targets
            results = await fleet.sync(sources, dest, on_done=finished.watch(done),
                                       **opts.api_kwargs())
        return _finish(results, opts.json)

    return _main(work, finished)
