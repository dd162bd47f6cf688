"""Contenders, rounds and summaries: the measurement model every workload shares.

A :class:`Group` is one comparison (e.g. "put a 1 GiB file"): its contenders run after a warm-up,
then alternately, round after round, in an order rotated every round so that none always goes
first. Each run yields a :class:`Sample` (one number in the group's unit, plus extras such as
peak RSS). Results are medians with their min–max range, the ratio of tether to each peer in the
group's own unit, and the issue's targets marked met or missed. Numbers are reported, never
asserted.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["lower", "higher"]
METRIC_NAMES = {"client_rss_mib": "client peak RSS", "server_rss_mib": "server peak RSS"}


@dataclass
class Sample:
    value: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Contender:
    name: str
    run: Callable[[], Sample]
    command: str = ""
    tether: bool = False


@dataclass(frozen=True)
class Target:
    """A target from the issue: a ratio of tether to a peer, or an absolute bound (peer None).

    ``metric`` is ``value`` (the median is used) or a key of ``Sample.extra`` such as
    ``client_rss_mib`` (the largest sample is used: a peak must hold in every round).
    """

    issue: str
    tether: str
    op: Literal["<=", ">="]
    limit: float
    peer: str | None = None
    metric: str = "value"


@dataclass
class Group:
    key: str
    title: str
    unit: str
    better: Better
    quantity: str
    contenders: list[Contender]
    targets: list[Target] = field(default_factory=list)
    rounds: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    samples: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), values)

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high,
                "samples": self.samples}


@dataclass
class ContenderResult:
    name: str
    command: str
    tether: bool
    value: Summary
    extra: dict[str, Summary]

    def metric(self, key: str) -> float:
        """The median value, or the peak of an extra (as targets use them)."""
        return self.value.median if key == "value" else self.extra[key].high

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "tether": self.tether, "value": self.value.to_json(),
                "extra": {k: s.to_json() for k, s in self.extra.items()}}


@dataclass(frozen=True)
class TargetResult:
    target: Target
    label: str
    measured: float
    met: bool

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {"issue": t.issue, "label": self.label, "tether": t.tether, "peer": t.peer,
                "metric": t.metric, "op": t.op, "limit": t.limit, "measured": self.measured,
                "met": self.met}


@dataclass
class GroupResult:
    group: Group
    rounds: int
    results: dict[str, ContenderResult]
    targets: list[TargetResult]

    @property
    def tether(self) -> ContenderResult:
        """The group's main tether contender (the first one)."""
        return next(r for r in self.results.values() if r.tether)

    def ratio(self, peer: str, tether: str | None = None) -> float:
        """tether ÷ peer in the group's unit (for time lower is better, for rates higher)."""
        mine = self.results[tether].value.median if tether else self.tether.value.median
        theirs = self.results[peer].value.median
        return mine / theirs if theirs else float("nan")

    def to_json(self) -> dict[str, Any]:
        g = self.group
        return {
            "title": g.title, "unit": g.unit, "better": g.better, "quantity": g.quantity,
            "rounds": self.rounds, "note": g.note,
            "contenders": {n: r.to_json() for n, r in self.results.items()},
            "ratios": {n: self.ratio(n) for n, r in self.results.items() if not r.tether},
            "targets": [t.to_json() for t in self.targets],
        }


# --- running ------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rotated(items: list[Contender], by: int) -> list[Contender]:
    k = by % len(items)
    return items[k:] + items[:k]


def run_group(group: Group, rounds: int, warmup: int) -> GroupResult:
    """Warm every contender up, then run them alternately for ``rounds`` rounds."""
    rounds = group.rounds or rounds
    for c in group.contenders:
        for _ in range(warmup):
            c.run()
    samples: dict[str, list[Sample]] = {c.name: [] for c in group.contenders}
    for n in range(rounds):
        for c in _rotated(group.contenders, n):
            sample = c.run()
            samples[c.name].append(sample)
            _say(f"  {group.key:<14} round {n + 1}/{rounds}  {c.name:<22} "
                 f"{sample.value:10.3f} {group.unit}")
    results = {c.name: _summarise(c, samples[c.name]) for c in group.contenders}
    result = GroupResult(group, rounds, results, [])
    result.targets = [evaluate(t, result) for t in group.targets]
    return result


def _summarise(c: Contender, samples: list[Sample]) -> ContenderResult:
    keys = sorted({k for s in samples for k in s.extra})
    extra = {k: Summary.of([s.extra[k] for s in samples if k in s.extra]) for k in keys}
    return ContenderResult(c.name, c.command, c.tether, Summary.of([s.value for s in samples]),
                           extra)


def evaluate(target: Target, result: GroupResult) -> TargetResult:
    """Measure a target: the ratio tether ÷ peer, or tether's own number."""
    g = result.group
    if target.peer is not None:
        measured = result.ratio(target.peer, target.tether)
        label = (f"{target.tether} {g.quantity} / {target.peer} {g.quantity} "
                 f"{target.op} {target.limit:g}")
    else:
        measured = result.results[target.tether].metric(target.metric)
        what = g.quantity if target.metric == "value" else METRIC_NAMES.get(
            target.metric, target.metric)
        unit = g.unit if target.metric == "value" else "MiB"
        label = f"{target.tether} {what} {target.op} {target.limit:g} {unit}"
    met = measured <= target.limit if target.op == "<=" else measured >= target.limit
    return TargetResult(target, label, measured, met)


# --- reading a result back (to re-render the report from a JSON file) --------------------------


def _not_rerunnable() -> Sample:
    raise RuntimeError("a contender read back from JSON cannot run")


def group_from_json(key: str, data: dict[str, Any]) -> GroupResult:
    """Rebuild a :class:`GroupResult` from its ``to_json`` form (targets re-evaluated)."""
    targets = [Target(t["issue"], t["tether"], t["op"], t["limit"], t["peer"], t["metric"])
               for t in data["targets"]]
    contenders = [Contender(name, _not_rerunnable, c["command"], c["tether"])
                  for name, c in data["contenders"].items()]
    group = Group(key, data["title"], data["unit"], data["better"], data["quantity"],
                  contenders, targets, note=data.get("note", ""))
    results = {
        name: ContenderResult(name, c["command"], c["tether"],
                              Summary.of(c["value"]["samples"]),
                              {k: Summary.of(s["samples"]) for k, s in c["extra"].items()})
        for name, c in data["contenders"].items()
    }
    result = GroupResult(group, data["rounds"], results, [])
    result.targets = [evaluate(t, result) for t in targets]
    return result
