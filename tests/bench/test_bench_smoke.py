"""`make bench` end to end at a smoke size: every controller, the floor, the naive loop and
the extras run, and the report is written. Figures at this size say nothing about the
targets (a run that misses one exits 1); rows that differ from the floor's are a bug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import CONTROLLERS, NOTES_MARKER
from tests.runtime.conftest import REPO_ROOT, subprocess_env

pytestmark = [
    pytest.mark.bench,
    pytest.mark.slow,
    pytest.mark.postgres_only,
    pytest.mark.django_db(transaction=True),
]


def _bench_run_at_smoke_size(*args: str) -> None:
    """`python -m bench.run` at a smoke size; at this size missed targets (exit 1) are expected."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--scale", "0.002", "--trials", "1", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]


def test_bench_runs_end_to_end_at_a_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(f"old figures\n{NOTES_MARKER}\nhand-written analysis\n")
    _bench_run_at_smoke_size("--sample", "20", "--out", str(out))

    report = out.read_text()
    for controller in CONTROLLERS:
        assert f"| {controller} |" in report
    assert "!= floor rows" not in report
    for extra in ("runner overhead", "claim latency, 8 concurrent claimers", "heartbeats over HTTP"):
        assert extra in report
    assert "old figures" not in report
    assert report.endswith(f"{NOTES_MARKER}\nhand-written analysis\n")


def test_bench_walks_compares_both_walks_with_the_floor_at_a_smoke_size(tmp_path: Path) -> None:
    """`make bench BENCH_ARGS=--walks`: each walk controller's row in its own section of the
    report (the rest of the file kept), with rows in its scattered step (the data must
    exercise the walk being compared)."""
    from bench.walks import SCATTERED_STEP, WALK_MARKERS

    out = tmp_path / "benchmarks.md"
    out.write_text(f"controller figures\n{WALK_MARKERS[0]}\nold walks\n{WALK_MARKERS[1]}\nanalysis\n")
    _bench_run_at_smoke_size("--walks", "--out", str(out))
    report = out.read_text()
    assert report.startswith(f"controller figures\n{WALK_MARKERS[0]}\n")
    assert report.endswith(f"{WALK_MARKERS[1]}\nanalysis\n")
    assert "old walks" not in report
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in lines}
    for controller, step in SCATTERED_STEP.items():
        scattered = rows[controller].split("|")[3].strip()
        assert scattered.endswith(f"({step})")
        assert int(scattered.split()[0].replace(",", "")) > 0, rows[controller]
