"""LOG_JSON=1: every line of worker, beat and gunicorn is one JSON object; run lines carry the run.

The processes are started with the commands of docker-compose.yml (`celery -A controlplane
--quiet worker|beat`, gunicorn with controlplane.gunicorn_conf), so what is tested is what
runs in production.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
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

from controlplane.common.logs import ContextFilter, log_context
from reconcilers.models import ReconcileRun, RunOutcome
from tests.runtime.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file parsed; a line that is not one JSON object fails with its text."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name} line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), f"{path.name} line {number}: {line!r}"
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        records.append(record)
    return records


def _start(args: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    handle = out.open("wb")
    try:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    finally:
        handle.close()  # the child has its own descriptor


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_and_beat_write_one_json_object_per_line(tmp_path: Path) -> None:
    queue = f"cptest-jsonlogs-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    broker = settings.REDIS_URL
    env = subprocess_env(
        LOG_JSON="1", CELERY_BROKER_URL=broker, RECONCILERS_QUEUE=queue, WORKER_METRICS_PORT="0"
    )
    celery = [sys.executable, "-m", "celery", "-A", "controlplane", "--quiet"]
    worker_out, beat_out = tmp_path / "worker.log", tmp_path / "beat.log"
    worker = _start(
        [*celery, "worker", "-Q", queue, "--loglevel", "INFO", "--concurrency", "1",
         "--hostname", f"{queue}@%h", "--without-gossip", "--without-mingle"],
        worker_out, env,
    )  # fmt: skip
    beat = _start(
        [*celery, "beat", "--loglevel", "INFO",
         "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"],
        beat_out, env,
    )  # fmt: skip
    sender = Celery("probe", broker=broker)
    try:
        task = sender.send_task("reconcilers.token_cleanup", queue=queue, kwargs={"force": True})
        deadline = time.monotonic() + 60
        run = None
        while run is None and time.monotonic() < deadline:
            assert worker.poll() is None, worker_out.read_text()[-3000:]
            assert beat.poll() is None, beat_out.read_text()[-3000:]
            run = ReconcileRun.objects.filter(controller="token-cleanup", outcome=RunOutcome.SUCCESS).first()
            time.sleep(0.3)
        assert run is not None, worker_out.read_text()[-3000:]
        time.sleep(1)  # beat's tick after start, the worker's task-succeeded line
    finally:
        sender.close()
        _stop(worker)
        _stop(beat)
        client = redis.Redis.from_url(broker)
        leftovers = list(client.scan_iter(match=f"*{queue}*"))
        if leftovers:
            client.delete(*leftovers)
        client.close()

    worker_records = _json_lines(worker_out)
    beat_records = _json_lines(beat_out)
    assert any("Starting" in r["message"] for r in beat_records if r["logger"] == "celery.beat"), beat_records
    assert any(r["message"].endswith("ready.") for r in worker_records), worker_records
    run_lines = [r for r in worker_records if r["logger"].startswith("reconcilers") and "run_id" in r]
    assert any("run done" in r["message"] for r in run_lines), worker_records
    # The step lines and the end line of the run: all carry the run.
    assert len(run_lines) >= 4, run_lines
    for record in run_lines:
        assert record["controller"] == "token-cleanup"
        assert record["run_id"] == run.pk
        assert record["fence"] == run.fence
        assert record["trigger"] == "celery"
        assert record["task_id"] == task.id
    # Celery's own task lines are JSON too, and nothing else (banner, shutdown) was printed.
    assert any(r["logger"] == "celery.app.trace" and "succeeded" in r["message"] for r in worker_records)


def _listening_port(path: Path, deadline: float) -> int:
    while time.monotonic() < deadline:
        match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", path.read_text())
        if match:
            return int(match.group(1))
        time.sleep(0.2)
    pytest.fail(f"gunicorn never listened: {path.read_text()[-3000:]}")


@pytest.mark.slow
def test_gunicorn_lines_and_access_lines_are_json(tmp_path: Path) -> None:
    out = tmp_path / "web.log"
    env = {
        **os.environ,
        "DEBUG": "1",
        "LOG_JSON": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path}/web.sqlite3",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # Port 0: the kernel picks a free one and gunicorn's "Listening at" line names it.
    web = _start(
        [sys.executable, "-m", "gunicorn", "controlplane.wsgi",
         "--config", "python:controlplane.gunicorn_conf",
         "--bind", "127.0.0.1:0", "--workers", "1", "--access-logfile", "-"],
        out, env,
    )  # fmt: skip
    try:
        port = _listening_port(out, time.monotonic() + 30)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                ok = httpx.get(f"{base}/healthz", headers={"X-Request-ID": "probe-1"}, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, out.read_text()[-3000:]
                time.sleep(0.2)
        assert ok.status_code == 200
        assert ok.headers["X-Request-ID"] == "probe-1"
        # An agent call without credentials: Django logs the 401 with the request's id.
        denied = httpx.post(f"{base}/api/v1/agents/heartbeat", json={}, timeout=5)
        assert denied.status_code == 401
        denied_id = denied.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", denied_id)
        time.sleep(0.5)
    finally:
        _stop(web)

    records = _json_lines(out)
    assert any(r["logger"] == "gunicorn.error" and "Listening at" in r["message"] for r in records)
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    probe = next(r for r in access if r.get("path") == "/healthz")
    assert (probe["status"], probe["method"], probe["request_id"]) == (200, "GET", "probe-1")
    heartbeat = next(r for r in access if r.get("path") == "/api/v1/agents/heartbeat")
    assert (heartbeat["status"], heartbeat["request_id"]) == (401, denied_id)
    django_lines = [r for r in records if r["logger"] == "django.request"]
    assert any(r.get("request_id") == denied_id for r in django_lines), django_lines


@pytest.mark.django_db
def test_agent_api_lines_carry_the_request_id(client: Client) -> None:
    """In-process: a line logged while an agent request runs carries its id, and a client's
    id is refused when it is not plain (it would land in every line)."""
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Capture()
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        response = client.post(
            "/api/v1/agents/heartbeat", data="{}", content_type="application/json",
            HTTP_X_REQUEST_ID="agent-7-beat-42",
        )  # fmt: skip
        hostile = client.post(
            "/api/v1/agents/heartbeat", data="{}", content_type="application/json",
            HTTP_X_REQUEST_ID='x" injected\nline',
        )  # fmt: skip
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 401
    assert response["X-Request-ID"] == "agent-7-beat-42"
    assert re.fullmatch(r"[0-9a-f]{32}", hostile["X-Request-ID"])
    ids = [getattr(record, "request_id", None) for record in captured]
    assert ids == ["agent-7-beat-42", hostile["X-Request-ID"]]


def test_log_context_nests_and_restores() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    with log_context(controller="a", trigger="celery"):
        with log_context(run_id=7):
            ContextFilter().filter(record)
        after = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        ContextFilter().filter(after)
    assert (record.controller, record.trigger, record.run_id) == ("a", "celery", 7)  # type: ignore[attr-defined]
    assert not hasattr(after, "run_id")
    assert after.controller == "a"  # type: ignore[attr-defined]
