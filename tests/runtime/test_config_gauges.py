"""The config gauges follow the database: a change shows on the web's and a worker's /metrics at
the next scrape, with no run in between (alerts that trust `enabled` and `paused` depend on it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from reconcilers.services import config_update, pause_set
from tests.runtime.conftest import entry, subprocess_env
from tests.runtime.controllers import Sleeper

pytestmark = pytest.mark.usefixtures("test_controllers")
PREFIX = "controlplane_controller_"


def _gauge(text: str, name: str, controller: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == PREFIX + name and sample.labels.get("controller") == controller:
                return float(sample.value)
    return None


def test_web_metrics_follow_a_disable_and_a_pause_at_the_next_scrape(client: Client) -> None:
    def scrape() -> str:
        return client.get("/metrics").content.decode()

    assert _gauge(scrape(), "enabled", Sleeper.name) == 1
    assert _gauge(scrape(), "paused", Sleeper.name) == 0
    config_update(Sleeper.name, {"enabled": False}, actor="test")
    assert _gauge(scrape(), "enabled", Sleeper.name) == 0
    pause_set(True, actor="test")
    assert _gauge(scrape(), "paused", Sleeper.name) == 1
    assert _gauge(scrape(), "paused", "agent-health") == 1  # the pause is global


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> str | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_metrics_follow_a_disable_at_the_next_scrape(tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = _free_port()
    queue = f"cptest-gauges-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    worker = entry(
        "celery", "worker", "-Q", queue, "--pool", "prefork", "--concurrency", "1",
        "--hostname", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
        env=subprocess_env(
            CELERY_BROKER_URL=settings.REDIS_URL,
            RECONCILERS_QUEUE=queue,
            PROMETHEUS_MULTIPROC_DIR=str(multiproc),
            WORKER_METRICS_PORT=str(port),
        ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        text = None
        while text is None and time.monotonic() < deadline:
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            text = _scrape(port)
            time.sleep(0.3)
        assert text is not None, "the worker's metrics port never answered"
        assert _gauge(text, "enabled", Sleeper.name) == 1
        config_update(Sleeper.name, {"enabled": False}, actor="test")
        # The very next scrape, no run and no wait in between.
        after: Any = _scrape(port)
        assert _gauge(after, "enabled", Sleeper.name) == 0
        assert _gauge(after, "enabled", "agent-health") == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
