"""`make bench-heartbeats` end to end at a smoke size: both servers start, both answer every
heartbeat, the section is written between its markers and the rest of the report is kept.
Figures at this size say nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.heartbeats import HEARTBEAT_MARKERS
from tests.runtime.conftest import REPO_ROOT, subprocess_env

pytestmark = [
    pytest.mark.bench,
    pytest.mark.slow,  # two gunicorns on fixed ports: run under the suite lock
    pytest.mark.postgres_only,
    pytest.mark.django_db(transaction=True),
]


def test_heartbeat_bench_runs_end_to_end_at_a_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(f"controller figures\n{HEARTBEAT_MARKERS[0]}\nold\n{HEARTBEAT_MARKERS[1]}\nanalysis\n")
    smoke = ["--agents", "50", "--trials", "1", "--seconds", "1", "--connections", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.heartbeats", *smoke],
        cwd=REPO_ROOT,
        env=subprocess_env(LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("controller figures\n")
    assert report.endswith(f"{HEARTBEAT_MARKERS[1]}\nanalysis\n")
    assert "old" not in report
    for server in ("project", "floor"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {server} | 2 |"))
        assert row.endswith("| 0 |"), row  # no failed heartbeat
    assert "2 connections: project / floor = " in report
