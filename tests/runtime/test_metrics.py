"""Controller metrics: names, pre-created series, the web's /metrics and a real Celery worker's port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from django.conf import settings
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from reconcilers.registry import controller_names
from reconcilers.runtime.metrics import DURATION_BUCKETS_SECONDS, SKIP_REASONS, metrics_precreate
from reconcilers.services import config_update, run_controller
from reconcilers.signals import HARD_TIME_LIMIT_MARGIN_SECONDS, on_before_task_publish
from tests.runtime.conftest import WORKER_METRICS_PORT, entry, subprocess_env
from tests.runtime.controllers import Sleeper, writes

pytestmark = pytest.mark.usefixtures("test_controllers")
PREFIX = "controlplane_controller_"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(values: dict[Any, float], name: str, **labels: str) -> float | None:
    return values.get((PREFIX + name, frozenset(labels.items())))


def test_every_series_is_present_at_zero_from_start() -> None:
    metrics_precreate(controller_names())
    label = {"controller": "test-other"}
    for result in ("success", "error"):
        assert REGISTRY.get_sample_value(PREFIX + "reconcile_total", {**label, "result": result}) == 0
    for reason in SKIP_REASONS:
        assert REGISTRY.get_sample_value(PREFIX + "reconcile_skipped_total", {**label, "reason": reason}) == 0
    for name in (
        "reconcile_errors_total",
        "items_processed_total",
        "running",
        "last_reconcile_timestamp_seconds",
        "lock_lost_total",
        "dry_run_pending_items",
        "brake_engaged",
    ):
        assert REGISTRY.get_sample_value(PREFIX + name, label) == 0, name
    # The config gauges are the database's values, read at scrape time.
    assert REGISTRY.get_sample_value(PREFIX + "enabled", label) == 1
    assert REGISTRY.get_sample_value(PREFIX + "dry_run", label) == 0
    assert REGISTRY.get_sample_value(PREFIX + "interval_seconds", label) == 60
    assert REGISTRY.get_sample_value(PREFIX + "config_invalid", label) == 0
    for bucket in DURATION_BUCKETS_SECONDS:
        value = REGISTRY.get_sample_value(
            PREFIX + "reconcile_duration_seconds_bucket", {**label, "le": str(float(bucket))}
        )
        assert value == 0, bucket
    assert REGISTRY.get_sample_value(PREFIX + "reconcile_duration_seconds_count", label) == 0


def test_web_metrics_endpoint_includes_controller_metrics() -> None:
    before = REGISTRY.get_sample_value(
        PREFIX + "reconcile_total", {"controller": Sleeper.name, "result": "success"}
    )
    run_controller(Sleeper.name, trigger="test")
    config_update(Sleeper.name, {"dry_run": True, "interval_seconds": 120}, actor="user:test")
    run_controller(Sleeper.name, trigger="test")
    values = samples(Client().get("/metrics").content.decode())
    assert sample(values, "reconcile_total", controller=Sleeper.name, result="success") == (before or 0) + 2
    assert sample(values, "items_processed_total", controller=Sleeper.name) is not None
    assert sample(values, "dry_run_pending_items", controller=Sleeper.name) == 1
    assert sample(values, "dry_run", controller=Sleeper.name) == 1
    assert sample(values, "interval_seconds", controller=Sleeper.name) == 120
    assert sample(values, "last_reconcile_timestamp_seconds", controller=Sleeper.name) > 0


def test_time_limits_come_from_the_config_per_message() -> None:
    config_update(Sleeper.name, {"run_timeout_seconds": 42}, actor="user:test")
    headers: dict[str, Any] = {"timelimit": (None, None)}
    on_before_task_publish(sender="reconcilers.test_sleeper", headers=headers)
    # Soft: run timeout + lock TTL (a batch is bounded by the TTL); hard: 30 s later.
    ttl = settings.RECONCILERS_LOCK_TTL_SECONDS
    assert headers["timelimit"] == (42 + ttl + HARD_TIME_LIMIT_MARGIN_SECONDS, 42 + ttl)
    chosen: dict[str, Any] = {"timelimit": (9, 5)}
    on_before_task_publish(sender="reconcilers.test_sleeper", headers=chosen)
    assert chosen["timelimit"] == (9, 5)
    other: dict[str, Any] = {"timelimit": (None, None)}
    on_before_task_publish(sender="someone.else", headers=other)
    assert other["timelimit"] == (None, None)


def _scrape(port: int) -> dict[Any, float] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except httpx.HTTPError:
        return None
    return samples(response.text) if response.status_code == 200 else None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_reconcile_in_a_celery_worker_shows_in_its_metrics_port(tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    stale = multiproc / "counter_999999.db"  # left by a previous worker on this host
    stale.write_bytes(b"stale")
    queue = f"cptest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    broker = settings.REDIS_URL  # the suite's own Redis database on the shared server
    worker = entry(
        "celery",
        "worker",
        "-Q",
        queue,
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--hostname",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-E",
        env=subprocess_env(
            CELERY_BROKER_URL=broker,
            RECONCILERS_QUEUE=queue,
            PROMETHEUS_MULTIPROC_DIR=str(multiproc),
            WORKER_METRICS_PORT=str(WORKER_METRICS_PORT),
        ),
    )
    sender = Celery("probe", broker=broker)
    try:
        deadline = time.monotonic() + 30
        values = None
        while time.monotonic() < deadline and values is None:
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            values = _scrape(WORKER_METRICS_PORT)
            time.sleep(0.3)
        assert values is not None, "worker metrics port never answered"
        assert sample(values, "reconcile_total", controller=Sleeper.name, result="success") == 0
        assert not stale.exists()

        sender.send_task("reconcilers.test_sleeper", queue=queue, kwargs={"force": True})
        counted = None
        while time.monotonic() < deadline + 10:
            values = _scrape(WORKER_METRICS_PORT) or {}
            counted = sample(values, "reconcile_total", controller=Sleeper.name, result="success")
            # A scrape reads each process's files one after the other, so it can see the new
            # counter with a running gauge read a moment earlier: wait for a scrape with both.
            if counted and sample(values, "running", controller=Sleeper.name) == 0:
                break
            time.sleep(0.3)
        assert counted == 1
        assert sample(values, "items_processed_total", controller=Sleeper.name) == 1
        assert sample(values, "running", controller=Sleeper.name) == 0
        assert writes(Sleeper.name) == 1
    finally:
        sender.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
        client = redis.Redis.from_url(broker)
        leftovers = list(client.scan_iter(match=f"*{queue}*"))
        if leftovers:
            client.delete(*leftovers)
        client.close()
