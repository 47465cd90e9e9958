"""Two gunicorn workers share the register limit: the counters are in Redis, not in a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres_only]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PORT = 17160  # issue 16's private range
BURST = 5
REQUESTS = 20


def _database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_two_gunicorn_workers_share_the_register_limit(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": _database_url(),  # the test database (a transactional test commits)
        "REDIS_URL": settings.REDIS_URL,
        "API_REGISTER_BURST": str(BURST),
        "API_REGISTER_WINDOW_SECONDS": "3600",
        "WORKER_METRICS_PORT": "0",
        # Behind one (simulated) proxy, so each run counts under an address of its own: the
        # counters outlive the run in the shared Redis.
        "TRUSTED_PROXY_COUNT": "1",
    }
    client = f"10.{os.getpid() % 250}.{int(time.time()) % 250}.{time.monotonic_ns() % 250}"
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "gunicorn.log").open("wb")
    # One thread per worker: 20 concurrent requests must be spread over both processes.
    web = subprocess.Popen(
        [str(BIN / "gunicorn"), "controlplane.wsgi", "-b", f"127.0.0.1:{PORT}", "-w", "2", "--threads", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{PORT}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()[-2000:]
            time.sleep(0.3)

        def one(_: int) -> Any:
            return httpx.post(
                f"{base}/api/v1/agents/register",
                json={"bootstrap_token": "cpb_wrong", "name": "guess", "capabilities": []},
                headers={"X-Forwarded-For": client},
                timeout=30,
            )

        with ThreadPoolExecutor(REQUESTS) as pool:
            responses = list(pool.map(one, range(REQUESTS)))
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(15)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * BURST + [429] * (REQUESTS - BURST), statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) >= 1
