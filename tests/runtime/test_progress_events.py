"""Live progress: a run reports each batch (run row and a Celery event), a watcher never stops a run."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.db import connection
from django.utils import timezone

from controlplane.audit.models import AuditLog
from reconcilers.models import ReconcileRun, RunOutcome
from reconcilers.runtime.context import RunProgress
from reconcilers.schedule import schedule_sync
from reconcilers.services import config_update, run_controller
from reconcilers.tasks import PROGRESS_EVENT
from reconcilers.testing import controllers_installed
from tests.runtime.conftest import entry, subprocess_env
from tests.runtime.controllers import TEST_CONTROLLERS, SlowPurge

OLD_ROWS = 23
BATCH_SIZE = 5
EXPECTED_ITEMS = [5, 10, 15, 20, 23]  # one event per batch that deleted rows


@pytest.fixture
def slow_purge(db: Any, redis_client: redis.Redis) -> Iterator[None]:
    with controllers_installed(*TEST_CONTROLLERS, SlowPurge):
        schedule_sync([SlowPurge.name])
        config_update(
            SlowPurge.name, {"params": {"batch_size": BATCH_SIZE, "retention_days": 1}}, actor="test"
        )
        old = timezone.now() - timedelta(days=10)
        AuditLog.objects.bulk_create(
            AuditLog(
                created_at=old, actor="test", action="test.old", resource_type="test", resource_id=str(i)
            )
            for i in range(OLD_ROWS)
        )
        yield


def test_each_batch_is_reported_with_the_counts_so_far(slow_purge: None) -> None:
    seen: list[RunProgress] = []
    summary = run_controller(SlowPurge.name, force=True, progress=seen.append)
    assert summary.outcome == "success", summary.error_text
    assert [p.items for p in seen] == EXPECTED_ITEMS
    assert [p.batches for p in seen] == sorted({p.batches for p in seen})
    assert {p.run_id for p in seen} == {summary.run_id}
    assert all(p.controller == SlowPurge.name and not p.dry_run for p in seen)
    assert seen[-1].steps == {"deleted": OLD_ROWS}


def test_a_failing_watcher_never_stops_the_run(slow_purge: None) -> None:
    def broken(progress: RunProgress) -> None:
        raise ConnectionError("broker unreachable")

    summary = run_controller(SlowPurge.name, force=True, progress=broken)
    assert summary.outcome == "success", summary.error_text
    assert summary.items == OLD_ROWS
    assert not AuditLog.objects.filter(action="test.old").exists()


class _Watcher:
    """A Celery events receiver in a thread: records progress events of one task, stops at
    that task's end."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.task_id: str | None = None
        self.online = threading.Event()  # set once the receiver consumes
        self.done = threading.Event()
        self.progress: list[dict[str, Any]] = []
        self.rows: list[tuple[str, int]] = []  # the run row as each event arrived
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            online = self.online

            class Receiver(self.app.events.Receiver):  # type: ignore[misc,name-defined]
                def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                    super().on_consume_ready(*args, **kwargs)
                    online.set()  # its queue is bound: no event sent from now on is missed

            with self.app.connection() as conn:
                self.receiver = Receiver(
                    conn,
                    handlers={
                        PROGRESS_EVENT: self._on_progress,
                        "task-succeeded": self._on_end,
                        "task-failed": self._on_end,
                    },
                )
                self.receiver.capture(limit=None, timeout=None, wakeup=True)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.errors.append(exc)
            self.done.set()

    def _on_progress(self, event: dict[str, Any]) -> None:
        if event.get("uuid") != self.task_id:
            return
        self.progress.append(event)
        try:
            run = ReconcileRun.objects.get(pk=event["run_id"])
            self.rows.append((run.outcome, run.items))
        finally:
            connection.close()  # this thread's connection; the test's teardown drops the database

    def _on_end(self, event: dict[str, Any]) -> None:
        if event.get("uuid") == self.task_id:
            self.done.set()
            self.receiver.should_stop = True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_celery_events_receiver_sees_a_purge_progress(slow_purge: None) -> None:
    queue = f"cptest-progress-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    broker = settings.REDIS_URL
    worker = entry(
        "celery",
        "worker",
        "-Q",
        queue,
        "--pool",
        "solo",
        "--loglevel",
        "INFO",
        "--hostname",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-E",
        env=subprocess_env(CELERY_BROKER_URL=broker, RECONCILERS_QUEUE=queue, WORKER_METRICS_PORT="0"),
    )
    app = Celery("watcher", broker=broker)
    watcher = _Watcher(app)
    watcher.thread.start()
    try:
        assert watcher.online.wait(30), "the events receiver never started consuming"
        result = app.send_task(
            f"reconcilers.{SlowPurge.name.replace('-', '_')}", queue=queue, kwargs={"force": True}
        )
        watcher.task_id = result.id
        assert watcher.done.wait(60), "the task's end never arrived"
        assert not watcher.errors, watcher.errors
        items = [event["items"] for event in watcher.progress]
        assert items == EXPECTED_ITEMS
        assert all(event["controller"] == SlowPurge.name and event["run_id"] for event in watcher.progress)
        # Live, not replayed at the end: while the run went on, its row already held the
        # event's count and was still running (the last event may meet the row just ended).
        assert [count for _, count in watcher.rows] == EXPECTED_ITEMS
        assert all(outcome == RunOutcome.RUNNING for outcome, _ in watcher.rows[:-1])
    finally:
        watcher.receiver.should_stop = True
        watcher.thread.join(10)
        app.close()
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
