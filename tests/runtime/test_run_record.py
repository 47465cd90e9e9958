"""Every run leaves an honest record (design.md §4.10): visible while it runs, equal to what has
committed, and accounted for however it stops (timeout, soft time limit, a terminated
connection, SIGKILL), with audit-retention's meta-audit records covering every deleted id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connection
from prometheus_client import REGISTRY

from controlplane.audit.models import AuditLog
from controlplane.common.db import db_now
from reconcilers.controllers.audit_retention import PURGE_ACTION, AuditRetentionController
from reconcilers.models import ReconcileRun
from reconcilers.runtime.context import RunContext
from reconcilers.runtime.fencing import fence_grant
from reconcilers.services import config_update, run_controller
from stress import db as stress_db
from stress.base import wait_until
from tests.runtime.conftest import REPO_ROOT, subprocess_env
from tests.runtime.test_metrics import PREFIX

NAME = "audit-retention"


def old_rows(count: int) -> list[int]:
    at = db_now() - timedelta(days=400)
    rows = AuditLog.objects.bulk_create(
        AuditLog(created_at=at, actor="user:x", action="test.old", resource_type="t") for _ in range(count)
    )
    return sorted(row.pk for row in rows)


def remaining(ids: list[int]) -> set[int]:
    return set(AuditLog.objects.filter(pk__in=ids).values_list("pk", flat=True))


def running_with_commits() -> ReconcileRun | None:
    return ReconcileRun.objects.filter(controller=NAME, outcome="running", items__gt=0).first()


def assert_records_cover_exactly(deleted: set[int]) -> None:
    """Every deleted id lies in exactly one meta-audit record's range, and the records' counts
    add up to the deleted total (a range keeps younger rows, so ranges alone are no counts)."""
    records = [row.details for row in AuditLog.objects.filter(action=PURGE_ACTION).order_by("pk")]
    for pk in deleted:
        covering = [r for r in records if r["first_id"] <= pk <= r["last_id"]]
        assert len(covering) == 1, (pk, covering)
    assert sum(r["deleted"] for r in records) == len(deleted)


@pytest.fixture
def slowed_purge(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Fault injection: each batch of the purge takes `seconds` longer."""

    def slow(seconds: float) -> None:
        real = AuditRetentionController._purge

        def purge(*args: Any) -> Any:
            time.sleep(seconds)
            return real(*args)

        monkeypatch.setattr(AuditRetentionController, "_purge", staticmethod(purge))

    return slow


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(target())
        finally:
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread, out


@pytest.mark.django_db(transaction=True)
def test_a_running_purge_shows_its_committed_items_as_they_grow(
    slowed_purge: Callable[[float], None], redis_client: Any
) -> None:
    ids = old_rows(40)
    config_update(NAME, {"params": {"batch_size": 5}}, actor="user:test")
    slowed_purge(0.25)  # 8 batches, about 2 s
    thread, out = in_thread(lambda: run_controller(NAME, force=True, trigger="test"))

    def running_items() -> int | None:
        row = ReconcileRun.objects.filter(controller=NAME, outcome="running").first()
        return row.items if row is not None and row.items > 0 else None

    first = wait_until(running_items, 10, 0.05)
    assert first is not None, "the run never showed committed items while running"
    second = wait_until(lambda: (items := running_items()) is not None and items > first and items, 10, 0.05)
    thread.join(30)
    assert second, "two reads of the running row did not show increasing items"
    run = ReconcileRun.objects.get(pk=out[0].run_id)
    assert (run.outcome, run.items, run.steps) == ("success", 40, {"deleted": 40})
    assert not remaining(ids)
    assert_records_cover_exactly(set(ids))


@pytest.mark.django_db
def test_a_purge_cut_by_its_run_timeout_records_what_it_committed(
    slowed_purge: Callable[[float], None], redis_client: Any
) -> None:
    ids = old_rows(30)
    config_update(NAME, {"run_timeout_seconds": 1, "params": {"batch_size": 5}}, actor="user:test")
    slowed_purge(0.4)  # the run timeout passes after about three batches
    before = _metric("items_processed_total")

    summary = run_controller(NAME, force=True, trigger="test")

    deleted = set(ids) - remaining(ids)
    assert 0 < len(deleted) < len(ids)
    assert (summary.outcome, summary.reason) == ("error", "timeout")
    run = ReconcileRun.objects.get(pk=summary.run_id)
    assert (run.outcome, run.reason) == ("error", "timeout")
    assert run.items == summary.items == len(deleted)
    assert run.steps == {"deleted": len(deleted)}
    assert _metric("items_processed_total") - before == len(deleted)
    assert_records_cover_exactly(deleted)


@pytest.mark.django_db
def test_a_soft_time_limit_after_a_commit_is_a_timeout_with_the_committed_counts(
    monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    """Celery raises SoftTimeLimitExceeded wherever the task is; here between two batches."""
    ids = old_rows(10)
    config_update(NAME, {"params": {"batch_size": 5}}, actor="user:test")
    real = AuditRetentionController._purge
    batches = 0

    def purge(*args: Any) -> Any:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise SoftTimeLimitExceeded()
        return real(*args)

    monkeypatch.setattr(AuditRetentionController, "_purge", staticmethod(purge))
    summary = run_controller(NAME, force=True, trigger="test")
    run = ReconcileRun.objects.get(pk=summary.run_id)
    assert (run.outcome, run.reason, run.items, run.steps) == ("error", "timeout", 5, {"deleted": 5})
    assert_records_cover_exactly(set(ids) - remaining(ids))


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_terminated_connection_is_replaced_before_the_run_is_recorded(
    slowed_purge: Callable[[float], None], redis_client: Any
) -> None:
    """A long-lived thread of our own (the in-process manager) whose connection the server
    terminated mid-run: the run is recorded as an error (not left running) and the same
    thread's next run succeeds."""
    ids = old_rows(40)
    config_update(NAME, {"params": {"batch_size": 5}}, actor="user:test")
    slowed_purge(0.2)
    backend: list[int] = []
    results: list[Any] = []

    def manager_thread() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend.append(cursor.fetchone()[0])
            results.append(run_controller(NAME, force=True, trigger="test"))
            results.append(run_controller(NAME, force=True, trigger="test"))
        finally:
            connection.close()

    thread = threading.Thread(target=manager_thread)
    thread.start()
    assert wait_until(running_with_commits, 10)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [backend[0]])
    thread.join(60)
    cut, after = results
    assert cut.outcome == "error"
    assert ReconcileRun.objects.get(pk=cut.run_id).outcome == "error"
    assert not ReconcileRun.objects.filter(controller=NAME, outcome="running").exists()
    assert after.outcome == "success", after.error_text
    assert not remaining(ids)
    assert_records_cover_exactly(set(ids))


@pytest.fixture
def slow_deletes() -> Iterator[None]:
    """Each DELETE on the audit table sleeps in the database, in any process."""
    stress_db.slow_deletes_install(0.2)
    yield
    stress_db.slow_deletes_uninstall()


@pytest.mark.slow
@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_right_after_a_commit_is_abandoned_and_its_batches_accounted(
    slow_deletes: None, redis_client: Any
) -> None:
    ids = old_rows(60)
    config_update(NAME, {"params": {"batch_size": 5}}, actor="user:test")
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "reconcile", NAME, "--force"],
        cwd=REPO_ROOT,
        env=subprocess_env(RECONCILERS_LOCK_TTL_SECONDS="3"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        committed = wait_until(running_with_commits, 20, 0.02)
        assert committed is not None, "the worker never committed a batch"
        os.kill(worker.pid, signal.SIGKILL)  # right after a commit: no chance to record an end
    finally:
        worker.wait(10)
    killed = ReconcileRun.objects.get(pk=committed.pk)
    assert killed.outcome == "running"  # nobody recorded its end
    deleted_by_killed = set(ids) - remaining(ids)
    assert killed.items == len(deleted_by_killed)  # the row equals what committed
    time.sleep(3.5)  # its lock expires (TTL 3 s)

    summary = run_controller(NAME, force=True, trigger="test")

    assert summary.outcome == "success", summary.error_text
    killed.refresh_from_db()
    assert (killed.outcome, killed.reason) == ("error", "abandoned")
    assert killed.items == len(deleted_by_killed)
    assert not remaining(ids)
    assert_records_cover_exactly(set(ids))


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(PREFIX + name, {"controller": NAME}) or 0.0


@pytest.mark.django_db
def test_a_stale_holder_hit_by_its_soft_time_limit_ends_as_lock_lost(
    monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    """Paused past its lock (SIGSTOP), a holder resumes into Celery's pending soft limit: it
    lost its lock first, and that is what its record says."""
    old_rows(10)
    config_update(NAME, {"params": {"batch_size": 5}}, actor="user:test")
    real = RunContext.checkpoint
    checkpoints = 0

    def checkpoint(self: RunContext) -> None:
        nonlocal checkpoints
        checkpoints += 1
        if checkpoints == 2:  # between batch 1 (committed) and batch 2
            fence_grant(NAME, "a newer holder")  # taken while this one was paused
            raise SoftTimeLimitExceeded()
        real(self)

    monkeypatch.setattr(RunContext, "checkpoint", checkpoint)
    summary = run_controller(NAME, force=True, trigger="test")
    assert (summary.outcome, summary.reason, summary.items) == ("error", "lock_lost", 5)
    assert "SoftTimeLimitExceeded" in ReconcileRun.objects.get(pk=summary.run_id).error
