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


def test_bench_runs_end_to_end_at_a_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(f"old figures\n{NOTES_MARKER}\nhand-written analysis\n")
    smoke = ["--scale", "0.002", "--trials", "1", "--sample", "20", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *smoke],
        cwd=REPO_ROOT,
        env=subprocess_env(LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]

    report = out.read_text()
    for controller in CONTROLLERS:
        assert f"| {controller} |" in report
    assert "!= floor rows" not in report
    for extra in ("runner overhead", "claim latency, 8 concurrent claimers", "heartbeats over HTTP"):
        assert extra in report
    assert "old figures" not in report
    assert report.endswith(f"{NOTES_MARKER}\nhand-written analysis\n")
