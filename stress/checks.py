"""Invariants over ReconcileRun history, as pure functions (property-tested on their own).

Per controller, over successful real (not dry) runs:
- `overlaps`: time ranges [started_at, finished_at] never overlap (one holder at a time);
- `too_close_starts`: two consecutive starts are at least `fraction` of the interval
  apart unless the later one was forced (the too-soon guard, design.md §4.5);
- `fence_regressions`: the fencing token strictly increases with the start time, and no
  token is used by two runs that got past the lock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconcilers.models import ReconcileRun, RunOutcome


@dataclass(frozen=True)
class RunRow:
    controller: str
    started_at: datetime
    finished_at: datetime
    outcome: str
    reason: str
    dry_run: bool
    forced: bool
    fence: int | None
    worker_host: str = ""

    @property
    def real_success(self) -> bool:
        return self.outcome == RunOutcome.SUCCESS and not self.dry_run


def runs_load(since: datetime, controllers: Iterable[str] | None = None) -> list[RunRow]:
    rows = ReconcileRun.objects.filter(started_at__gte=since)
    if controllers is not None:
        rows = rows.filter(controller__in=list(controllers))
    return [
        RunRow(
            controller=r.controller,
            started_at=r.started_at,
            finished_at=r.finished_at or r.started_at,
            outcome=r.outcome,
            reason=r.reason,
            dry_run=r.dry_run,
            forced=r.forced,
            fence=r.fence,
            worker_host=r.worker_host,
        )
        for r in rows.order_by("controller", "started_at", "id")
    ]


def _by_controller(runs: Iterable[RunRow]) -> dict[str, list[RunRow]]:
    grouped: dict[str, list[RunRow]] = {}
    for run in sorted(runs, key=lambda r: (r.controller, r.started_at, r.finished_at)):
        grouped.setdefault(run.controller, []).append(run)
    return grouped


def overlaps(runs: Iterable[RunRow]) -> list[tuple[RunRow, RunRow]]:
    """Pairs of successful real runs of one controller whose time ranges intersect."""
    found: list[tuple[RunRow, RunRow]] = []
    for group in _by_controller(r for r in runs if r.real_success).values():
        latest: RunRow | None = None  # the run with the latest finish so far
        for run in group:
            if latest is not None and run.started_at < latest.finished_at:
                found.append((latest, run))
            if latest is None or run.finished_at > latest.finished_at:
                latest = run
    return found


def too_close_starts(
    runs: Iterable[RunRow], interval_seconds: Mapping[str, float], fraction: float = 0.5
) -> list[tuple[RunRow, RunRow]]:
    """Consecutive successful real runs starting less than `fraction` x interval apart,
    the later one not forced."""
    found: list[tuple[RunRow, RunRow]] = []
    for name, group in _by_controller(r for r in runs if r.real_success).items():
        gap = fraction * interval_seconds[name]
        for earlier, later in itertools.pairwise(group):
            if not later.forced and (later.started_at - earlier.started_at).total_seconds() < gap:
                found.append((earlier, later))
    return found


def fence_regressions(runs: Iterable[RunRow]) -> list[str]:
    """Successful real runs whose fence does not increase with the start time, and fences
    shared by two runs that passed the lock (success or error)."""
    problems: list[str] = []
    passed = [r for r in runs if r.outcome != RunOutcome.SKIPPED and r.fence is not None]
    for name, group in _by_controller(passed).items():
        counts = Counter(r.fence for r in group)
        problems += [f"{name}: fence {fence} used by {n} runs" for fence, n in counts.items() if n > 1]
        previous: RunRow | None = None
        for run in (r for r in group if r.real_success):
            assert run.fence is not None
            if previous is not None and previous.fence is not None and run.fence <= previous.fence:
                problems.append(
                    f"{name}: run at {run.started_at.isoformat()} has fence {run.fence} "
                    f"<= {previous.fence} of the run before it"
                )
            previous = run
    return problems


def outcome_counts(runs: Sequence[RunRow]) -> dict[str, dict[str, int]]:
    """Per controller: successes, errors by reason, skips by reason."""
    table: dict[str, Counter[str]] = {}
    for run in runs:
        key = run.outcome if run.outcome == RunOutcome.SUCCESS else f"{run.outcome}:{run.reason}"
        if run.dry_run:
            key += ":dry"
        table.setdefault(run.controller, Counter())[key] += 1
    return {name: dict(sorted(counter.items())) for name, counter in sorted(table.items())}


def describe_pair(pair: tuple[RunRow, RunRow]) -> str:
    a, b = pair
    return (
        f"{a.controller}: [{a.started_at.isoformat()}, {a.finished_at.isoformat()}] fence {a.fence} "
        f"({a.worker_host}) vs [{b.started_at.isoformat()}, {b.finished_at.isoformat()}] fence {b.fence} "
        f"({b.worker_host}) forced={b.forced}"
    )
