"""Run tether's benchmarks against OpenSSH, rsync, AsyncSSH and netcat (see docs/benchmarks.md).

``python -m bench [--quick] [--only NAME] [--out DIR] [--ssh-rc] [--no-docs]``, or
``python -m bench --render JSON`` to redraw the chart and docs from a results file.

Checks what is installed (and says exactly what is missing), sets the peers up, runs the
workloads, prints the table and writes JSON, a chart and — after a full run of every workload —
the generated part of docs/benchmarks.md (a full or ``--only wan`` run also rewrites its
own wan section). Exit status: 0 when every workload ran, 1 when one
failed (the others still run and are reported), 2 when something is missing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from bench import DOCS, RESULTS
from bench.prereqs import cpu_ticks, explain, machine, missing, stolen

NOFILE_WANTED = 8192


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.workloads import WORKLOADS

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 3 rounds, to check that the harness works")
    parser.add_argument("--only", choices=list(WORKLOADS), metavar="NAME",
                        help=f"run one workload: {', '.join(WORKLOADS)}")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for the JSON and the chart [bench/results]")
    parser.add_argument("--ssh-rc", action="store_true",
                        help="let sshd's sessions source the user's ~/.bashrc (by default they "
                             "do not, like tether's commands)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="run nothing: redraw the chart and the docs from a results file")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not rewrite docs/benchmarks.md after a full run")
    return parser.parse_args(argv)


def raise_nofile() -> None:
    """Room for a thousand connections on each side (servers inherit it from us)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_workloads(names: list[str], sizes: Any, shell_rc: bool, meta: dict[str, Any]
                  ) -> dict[str, Any]:
    """Set the peers up and run each workload; failures and timings are noted in ``meta``."""
    from bench.config import Context
    from bench.peers import Peers
    from bench.procs import BenchError
    from bench.workloads import WORKLOADS

    results: dict[str, Any] = {}
    failed: dict[str, str] = meta.setdefault("failed", {})
    seconds: dict[str, float] = meta.setdefault("workload_seconds", {})
    load: dict[str, str] = meta.setdefault("load_average", {})
    steal: dict[str, str] = meta.setdefault("steal", {})
    with Peers(sizes.fast_bytes, shell_rc) as peers:
        print(f"bench: peers up in {peers.tmp} (transfers on {peers.fast_kind})",
              file=sys.stderr)
        meta["fast_dir"] = peers.fast_kind
        ctx = Context(peers, sizes)
        for name in names:
            print(f"bench: {name}", file=sys.stderr, flush=True)
            t0, ticks = time.perf_counter(), cpu_ticks()
            try:
                results[name] = WORKLOADS[name](ctx)
            except BenchError as exc:
                failed[name] = str(exc)
                print(f"bench: {name} FAILED: {exc}", file=sys.stderr)
            except Exception as exc:
                failed[name] = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()
            seconds[name] = round(time.perf_counter() - t0, 1)
            load[name] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            steal[name] = stolen(ticks, cpu_ticks())
        return results


def render(args: argparse.Namespace) -> int:
    """Re-render the chart (and, for a full run, the docs) from a results file."""
    import json

    from bench.stats import group_from_json

    data = json.loads(args.render.read_text())
    results = {name: [group_from_json(key, g) for key, g in groups.items()]
               for name, groups in data["workloads"].items()}
    tag = data["mode"]
    png = args.out / ("latest.png" if tag == "full" else f"latest-{tag}.png")
    write_report(args, data, results, tag, png)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args)
    lacking = missing()
    if lacking:
        print(explain(lacking), file=sys.stderr)
        return 2
    from bench.config import FULL, QUICK
    from bench.procs import BenchError
    from bench.workloads import WORKLOADS

    sizes = QUICK if args.quick else FULL
    names = [args.only] if args.only else list(WORKLOADS)
    tag = sizes.mode + (f"-{args.only}" if args.only else "") + ("-ssh-rc" if args.ssh_rc else "")
    raise_nofile()
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg())}
    ticks = cpu_ticks()
    try:
        results = run_workloads(names, sizes, args.ssh_rc, meta)
    except BenchError as exc:
        print(f"bench: could not set the peers up: {exc}", file=sys.stderr)
        return 1
    meta |= {
        "mode": tag, "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t0, "rounds": sizes.rounds,
        "warmup": sizes.warmup, "sizes": asdict(sizes), "machine": machine(),
        "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "steal_whole_run": stolen(ticks, cpu_ticks()),
        "ssh_sessions": "user's shell startup files (--ssh-rc)" if args.ssh_rc
        else "SHLVL=1: bash skips ~/.bashrc, like tether's commands",
    }
    report(args, meta, results, tag, started)
    return 1 if meta["failed"] else 0


def report(args: argparse.Namespace, meta: dict[str, Any], results: dict[str, Any], tag: str,
           started: datetime.datetime) -> None:
    from bench import report as rep

    meta["command"] = meta["command"].strip()
    print(rep.table(results))
    data = rep.to_json(meta, results)
    latest = "latest" if tag == "full" else f"latest-{tag}"
    path = rep.write_json(data, args.out, started.strftime("%Y%m%dT%H%M%S"), latest + ".json")
    print(f"\nbench: wrote {path} and {args.out / (latest + '.json')} in "
          f"{meta['wall_seconds']:.1f} s", file=sys.stderr)
    write_report(args, data, results, tag, args.out / f"{latest}.png")


def write_report(args: argparse.Namespace, data: dict[str, Any], results: dict[str, Any],
                 tag: str, png: Path) -> None:
    """The chart, and after a full run of every workload the docs."""
    from bench import report as rep

    if results:
        rep.chart(results, png, f"tether vs peers — {tag} run of {data['started']}")
        print(f"bench: drew {png}", file=sys.stderr)
    if tag == "full" and not args.no_docs:
        link = os.path.relpath(png, DOCS.parent)
        rep.update_docs(DOCS, rep.markdown(data, results, link))
        print(f"bench: updated {DOCS}", file=sys.stderr)
    if tag in ("full", "full-wan") and "wan" in results and not args.no_docs:
        rep.update_docs(DOCS, rep.wan_markdown(data, results["wan"]), section="wan")
        print(f"bench: updated the wan section of {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
