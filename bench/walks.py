"""The batch walk before and after PgBouncer support, measured in one benchmark run.

`python -m bench.run --walks` runs each controller whose walk reads scattered candidates
(agent-health, job-recovery, token-cleanup) on fresh data with the keyset pages it uses now
and with the streamed server-side cursor it used before (kept here, for the comparison
only), alternating, with the SQL floor on the same data: median of the trials, spread, and
each walk's ratio to the floor.

The streamed walk is what `reconcilers.queries.batches` did until PgBouncer's transaction
pooling broke it: the ids of one SELECT, read `size` at a time from a cursor Django
declares WITH HOLD outside a transaction, so it outlives each batch's commit on a direct
connection (and is lost behind a pooler). The trial process swaps it in when BENCH_WALK is
`streamed`.

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

WALKS = ("keyset", "streamed")
# Each controller's step whose candidates are scattered: the one the walk change is about.
SCATTERED_STEP = {
    "agent-health": "lease_offline",
    "job-recovery": "recovered_holder_offline",
    "token-cleanup": "exhausted",
}
WALK_CONTROLLERS = tuple(SCATTERED_STEP)
# The report section goes between these in --out (added at the end if absent).
WALK_MARKERS = ("<!-- batch-walks: start -->", "<!-- batch-walks: end -->")


def streamed_pages(head: Any, key: str, picked_field: str, size: int) -> Iterator[list[Any]]:
    """The old walk: every value of one SELECT, from a server-side cursor, `size` at a time."""
    values = head.values_list(picked_field, flat=True).iterator(chunk_size=size)
    while batch := list(islice(values, size)):
        yield batch


def use_walk(walk: str) -> None:
    """Make this process's batch walks `walk` (the trial process, before its run)."""
    if walk not in WALKS:
        raise ValueError(f"BENCH_WALK must be one of {WALKS}, got {walk!r}")
    if walk == "streamed":
        from reconcilers.queries import batches

        batches._keyset_pages = streamed_pages


@dataclass
class WalkFigures:
    controller: str
    rows: dict[str, int] = field(default_factory=dict)
    scattered: dict[str, int] = field(default_factory=dict)  # the scattered step's rows, per walk
    seconds: dict[str, list[float]] = field(default_factory=lambda: {walk: [] for walk in WALKS})
    floor_s: list[float] = field(default_factory=list)

    def median(self, walk: str) -> float:
        return statistics.median(self.seconds[walk])

    def spread(self, walk: str) -> float:
        """(max - min) / median of the walk's trials."""
        values = self.seconds[walk]
        return (max(values) - min(values)) / self.median(walk) if self.median(walk) else 0.0

    def ratio(self, walk: str) -> float:
        floor = statistics.median(self.floor_s)
        return self.median(walk) / floor if floor else float("inf")

    def verdict(self) -> str:
        """The keyset walk's ratio to the floor may be worse than the streamed one's by at
        most max(5 %, the larger spread)."""
        allowed = max(0.05, self.spread("keyset"), self.spread("streamed"))
        worse = self.ratio("keyset") / self.ratio("streamed") - 1
        return (
            "ok" if worse <= allowed else f"keyset {worse:+.0%} worse than streamed (allowed {allowed:.0%})"
        )


def render_walks(figures: list[WalkFigures], *, scale: float, trials: int) -> str:
    lines = [
        WALK_MARKERS[0],
        "### Last run: keyset pages (now) against the streamed cursor (before)",
        "",
        f"Scale {scale:g}, median of {trials} fresh loads per walk, alternating; "
        "spread = (max - min) / median.",
        "",
        "| controller | rows | of which scattered | keyset s | spread | streamed s | spread | floor s "
        "| keyset ratio | streamed ratio | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in figures:
        step = SCATTERED_STEP[f.controller]
        lines.append(
            f"| {f.controller} | {f.rows.get('keyset', 0):,} | {f.scattered.get('keyset', 0):,} ({step}) "
            f"| {f.median('keyset'):.3f} "
            f"| {f.spread('keyset'):.0%} | {f.median('streamed'):.3f} | {f.spread('streamed'):.0%} "
            f"| {statistics.median(f.floor_s):.3f} | {f.ratio('keyset'):.2f} | {f.ratio('streamed'):.2f} "
            f"| {f.verdict()} |"
        )
    lines.append(WALK_MARKERS[1])
    return "\n".join(lines) + "\n"
