"""`make bench`: every controller against the floor and the naive loop, on PostgreSQL.

    python -m bench.run [--scale 1.0] [--trials 3] [--sample 2000] [--out docs/benchmarks.md]

Per controller and trial the data is generated fresh, the controller runs through the full
runner (lock, fence, metrics, history) in its own process (for a clean peak RSS), then the
data is generated again and the floor SQL runs on it. The naive loop runs on a sample and
is extrapolated to the controller's row count. Extra measurements (runner overhead, claim
latency, heartbeat throughput) live in bench/extras.py.

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.progress import Advance, progress_steps

ROOT = Path(__file__).resolve().parent.parent
CONTROLLERS = ("agent-health", "job-recovery", "queue-priority", "token-cleanup", "audit-retention")
SMALL_SCALE = 0.01  # the 10k-row size the RSS growth is measured against

# Targets from the benchmark issue.
FLOOR_RATIO_TARGET = {"audit-retention": 2.5}
FLOOR_RATIO_DEFAULT = 1.5
SPEEDUP_TARGET = 10.0
RSS_GROWTH_TARGET_MB = 100.0


@dataclass
class ControllerFigures:
    controller: str
    rows: int = 0
    steps: dict[str, int] = field(default_factory=dict)
    controller_s: list[float] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)
    floor_rows: int = 0
    naive_s_per_row: float = 0.0
    naive_sample_rows: int = 0
    peak_rss_mb: float = 0.0
    small_peak_rss_mb: float = 0.0

    @property
    def controller_median(self) -> float:
        return statistics.median(self.controller_s)

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor_s)

    @property
    def ratio(self) -> float:
        return self.controller_median / self.floor_median if self.floor_median else float("inf")

    @property
    def naive_estimate_s(self) -> float:
        return self.naive_s_per_row * self.rows

    @property
    def speedup(self) -> float:
        return self.naive_estimate_s / self.controller_median if self.controller_median else float("inf")

    @property
    def rss_growth_mb(self) -> float:
        return self.peak_rss_mb - self.small_peak_rss_mb

    def verdicts(self) -> list[str]:
        misses = []
        target = FLOOR_RATIO_TARGET.get(self.controller, FLOOR_RATIO_DEFAULT)
        if self.ratio > target:
            misses.append(f"ratio {self.ratio:.2f} > {target}")
        if self.speedup < SPEEDUP_TARGET:
            misses.append(f"speedup {self.speedup:.1f} < {SPEEDUP_TARGET:g}")
        if self.rss_growth_mb > RSS_GROWTH_TARGET_MB:
            misses.append(f"RSS growth {self.rss_growth_mb:.0f} MB > {RSS_GROWTH_TARGET_MB:g}")
        if self.rows != self.floor_rows:
            misses.append(f"rows {self.rows} != floor rows {self.floor_rows}")
        return misses


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()


def _fresh(controller: str, scale: float) -> None:
    from django.db import connection

    from bench.generate import TABLES_FOR, Sizes, generate

    generate(Sizes.at(scale), TABLES_FOR[controller])
    connection.close()  # the trial process must not wait on our session


def _trial(controller: str, walk: str = "keyset") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.trial", controller],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LOG_LEVEL": "WARNING", "BENCH_WALK": walk},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["outcome"] != "success":
        raise RuntimeError(f"{controller} trial did not succeed: {result}")
    return result


def measure_steps(trials: int) -> int:
    """What `measure` reports to its progress callback: each trial's run and floor, the
    naive loop, the small-scale run."""
    return 2 * trials + 2


def measure(
    controller: str, *, scale: float, trials: int, sample: int, advance: Advance = lambda _next: None
) -> ControllerFigures:
    from bench.floors import FLOORS
    from bench.naive import NAIVE
    from controlplane.common.db import db_now

    figures = ControllerFigures(controller)
    for trial in range(trials):
        _fresh(controller, scale)
        result = _trial(controller)
        advance(f"{controller}: floor {trial + 1}/{trials}")
        figures.controller_s.append(result["wall_s"])
        figures.rows, figures.steps = result["items"], result["steps"]
        figures.peak_rss_mb = max(figures.peak_rss_mb, result["peak_rss_mb"])

        _fresh(controller, scale)
        started = time.perf_counter()
        floor_steps = FLOORS[controller](db_now())
        figures.floor_s.append(time.perf_counter() - started)
        figures.floor_rows = sum(floor_steps.values())
        advance(
            f"{controller}: trial {trial + 2}/{trials}" if trial + 1 < trials else f"{controller}: naive loop"
        )

    _fresh(controller, scale)
    started = time.perf_counter()
    figures.naive_sample_rows = NAIVE[controller](db_now(), sample)
    naive_s = time.perf_counter() - started
    figures.naive_s_per_row = naive_s / max(1, figures.naive_sample_rows)
    advance(f"{controller}: small-scale run")

    _fresh(controller, min(scale, SMALL_SCALE))
    figures.small_peak_rss_mb = _trial(controller)["peak_rss_mb"]
    advance(f"{controller}: done")
    return figures


def render(figures: list[ControllerFigures], *, scale: float, trials: int, extras: dict[str, Any]) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    lines = [
        "# Benchmarks",
        "",
        f"Scale {scale:g} (1.0 = 1M agents, 1M commands, 100k pending platform jobs over 1k tenants, "
        f"100k tokens, 2M audit logs); median of {trials} fresh loads per controller.",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"PostgreSQL {pg_version}, local socket over loopback.",
        "",
        "Reproduce: `make bench` (or `make bench BENCH_ARGS='--scale 0.1 --trials 1'`).",
        "",
        "| controller | rows changed | controller s (median) | floor s | ratio | naive s (extrapolated) "
        "| speedup | peak RSS MB | RSS growth 10k→full MB | misses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.controller} | {f.rows:,} | {f.controller_median:.3f} | {f.floor_median:.3f} "
            f"| {f.ratio:.2f} "
            f"| {f.naive_estimate_s:.1f} | {f.speedup:.0f}x | {f.peak_rss_mb:.0f} | {f.rss_growth_mb:.0f} "
            f"| {'; '.join(f.verdicts()) or 'none'} |"
        )
    lines += ["", "Steps per controller (rows changed):", ""]
    for f in figures:
        lines.append(f"- {f.controller}: {json.dumps(f.steps)} (naive sample: {f.naive_sample_rows} rows)")
    if extras:
        lines += ["", "## Runtime and protocol", ""]
        for key, value in extras.items():
            lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


NOTES_MARKER = "<!-- analysis: kept when make bench rewrites the figures above -->"


def _kept_notes(path: Path) -> str:
    """The hand-written analysis below the marker of an existing report, if any."""
    if not path.exists():
        return ""
    text = path.read_text()
    return "\n" + text[text.index(NOTES_MARKER) :] if NOTES_MARKER in text else ""


def measure_walks(controller: str, *, scale: float, trials: int) -> Any:
    """Both batch walks and the floor on fresh data, alternating, `trials` times (bench/walks.py)."""
    from bench.floors import FLOORS
    from bench.walks import SCATTERED_STEP, WALKS, WalkFigures
    from controlplane.common.db import db_now

    figures = WalkFigures(controller)
    for trial in range(trials):
        # Alternate which walk goes first, so neither always runs on the warmer cache.
        for walk in WALKS if trial % 2 == 0 else tuple(reversed(WALKS)):
            _fresh(controller, scale)
            result = _trial(controller, walk)
            figures.seconds[walk].append(result["wall_s"])
            figures.rows[walk] = result["items"]
            figures.scattered[walk] = result["steps"].get(SCATTERED_STEP[controller], 0)
        _fresh(controller, scale)
        started = time.perf_counter()
        FLOORS[controller](db_now())
        figures.floor_s.append(time.perf_counter() - started)
        print(json.dumps(vars(figures)), file=sys.stderr, flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--sample", type=int, default=2000, help="rows the naive loop processes")
    parser.add_argument("--controllers", nargs="*", default=list(CONTROLLERS), choices=CONTROLLERS)
    parser.add_argument("--no-extras", action="store_true", help="skip runner/claim/heartbeat figures")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument(
        "--walks",
        action="store_true",
        help="only compare the batch walks (keyset pages against the old streamed cursor; bench/walks.py)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10 or args.trials < 1 or args.sample < 1:
        parser.error("--scale must be in (0, 10], --trials and --sample at least 1")

    _setup_django()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        parser.error("benchmarks run on PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)

    if args.walks:
        from bench.report import section_write
        from bench.walks import WALK_CONTROLLERS, WALK_MARKERS, render_walks

        walks = [
            measure_walks(c, scale=args.scale, trials=args.trials)
            for c in args.controllers
            if c in WALK_CONTROLLERS
        ]
        walk_report = render_walks(walks, scale=args.scale, trials=args.trials)
        print(walk_report)
        if args.out:  # its own section: the controller figures and the analysis stay
            section_write(args.out, walk_report, WALK_MARKERS)
        return 1 if any(w.verdict() != "ok" for w in walks) else 0

    figures = []
    extras: dict[str, Any] = {}
    steps = len(args.controllers) * measure_steps(args.trials) + (0 if args.no_extras else 1)
    first = f"{args.controllers[0]}: trial 1/{args.trials}" if args.controllers else "runtime and protocol"
    with progress_steps("make bench", steps, first=first) as advance:
        for controller in args.controllers:
            print(f"--- {controller}", file=sys.stderr, flush=True)
            figures.append(
                measure(controller, scale=args.scale, trials=args.trials, sample=args.sample, advance=advance)
            )
            print(json.dumps(vars(figures[-1])), file=sys.stderr, flush=True)
        if not args.no_extras:
            from bench.extras import measure_extras

            extras = measure_extras(scale=args.scale)
            advance("report")
    report = render(figures, scale=args.scale, trials=args.trials, extras=extras)
    print(report)
    if args.out:
        args.out.write_text(report + _kept_notes(args.out))
    return 1 if any(f.verdicts() for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
