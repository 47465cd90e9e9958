"""The web's gunicorn config keeps prometheus multiprocess metrics honest when a worker dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PORT = 16428  # helper D's range (ops tests)


def _live_gauge_pids(directory: Path) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("gauge_livesum_*.db")}


@pytest.mark.slow
def test_dead_worker_live_gauges_leave_the_aggregate(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path}/web.sqlite3",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "controlplane.wsgi",
            "--config", "python:controlplane.gunicorn_conf",
            "--bind", f"127.0.0.1:{PORT}", "--workers", "2",
        ],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(_live_gauge_pids(metrics_dir)) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
            time.sleep(0.2)
        workers = _live_gauge_pids(metrics_dir)
        assert len(workers) == 2, f"expected both workers' live gauges, found {workers}"

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while victim in _live_gauge_pids(metrics_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert victim not in _live_gauge_pids(metrics_dir)
        assert httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=5).status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
