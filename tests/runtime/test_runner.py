"""The runner against real Redis and the real database: exclusivity, fencing, outages, history."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY

from controlplane.common.db import db_now
from reconcilers.models import ReconcilerConfig, ReconcilerState, ReconcileRun
from reconcilers.runtime import runner
from reconcilers.runtime.fencing import fence_current
from reconcilers.runtime.runner import run_history_prune
from reconcilers.runtime.summary import RunSummary
from reconcilers.services import config_update, pause_set, run_controller
from stress.procs import RedisServer
from tests.runtime.conftest import NOTHING_LISTENS_PORT, entry, subprocess_env
from tests.runtime.controllers import WRITE_ACTION, Gated, Sleeper, writes

pytestmark = pytest.mark.usefixtures("test_controllers")

CLI_KEYS = {
    "controller",
    "outcome",
    "reason",
    "items",
    "steps",
    "dry_run",
    "would_change",
    "flags",
    "fence",
    "duration_s",
}


def hold(seconds: float, name: str = Sleeper.name) -> None:
    config_update(name, {"params": {"hold_seconds": seconds}}, actor="user:test")


def in_thread(
    target: Any, *args: Any, name: str = "runner", **kwargs: Any
) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(target(*args, **kwargs))
        finally:
            connection.close()

    thread = threading.Thread(target=body, name=name)
    thread.start()
    return thread, out


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"controlplane_controller_{name}", labels) or 0.0


def test_summary_has_exactly_the_cli_keys() -> None:
    summary = run_controller(Sleeper.name, trigger="test")
    assert set(summary.as_json()) == CLI_KEYS
    assert summary.outcome == "success"
    assert summary.reason is None
    assert summary.items == 1
    assert dict(summary.steps) == {"written": 1}
    assert summary.fence == fence_current(Sleeper.name)
    run = ReconcileRun.objects.get(pk=summary.run_id)
    assert (run.outcome, run.items, run.steps, run.fence) == ("success", 1, {"written": 1}, summary.fence)
    assert run.worker_host.endswith(f":{__import__('os').getpid()}")
    json.dumps(summary.as_dict())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["redis", "database"])
def test_two_threads_started_together_exactly_one_reconciles(settings: Any, backend: str) -> None:
    settings.RECONCILERS_LOCK_BACKEND = backend
    hold(1.0)
    barrier = threading.Barrier(2)

    def go() -> RunSummary:
        barrier.wait()
        return run_controller(Sleeper.name, trigger="test")

    threads = [in_thread(go, name=f"runner-{i}") for i in range(2)]
    for thread, _ in threads:
        thread.join(timeout=30)
    outcomes = sorted((out[0].outcome, out[0].reason) for _, out in threads)
    assert outcomes == [("skipped", "locked"), ("success", None)]
    assert writes(Sleeper.name) == 1
    assert (
        ReconcileRun.objects.filter(controller=Sleeper.name, outcome="skipped", reason="locked").count() == 1
    )


@pytest.mark.django_db(transaction=True)
def test_two_processes_started_together_exactly_one_reconciles() -> None:
    hold(1.5)
    start_at = time.time() + 4  # both processes are loaded and waiting by then
    procs = [entry("reconcile", Sleeper.name, str(start_at), env=subprocess_env()) for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted((r["outcome"], r["reason"]) for r in results) == [("skipped", "locked"), ("success", None)]
    assert writes(Sleeper.name) == 1
    assert len({r["run_id"] for r in results}) == 2


class _PausedRenewer:
    """Fault injection: a holder paused by the OS (GC, SIGSTOP) renews nothing and notices nothing."""

    def __init__(self, held: Any, lost: threading.Event, progress: Any = None) -> None:
        pass

    def start(self) -> _PausedRenewer:
        return self

    def stop(self) -> None:
        pass


@pytest.mark.django_db(transaction=True)
def test_expired_holder_cannot_commit_after_a_newer_holder_wrote(settings: Any, monkeypatch: Any) -> None:
    settings.RECONCILERS_LOCK_TTL_SECONDS = 0.5
    monkeypatch.setattr(runner, "LockRenewer", _PausedRenewer)
    paused, out = in_thread(run_controller, Gated.name, trigger="test", name="paused-holder")
    assert Gated.entered.wait(timeout=10)
    time.sleep(0.8)  # past the TTL: the lock expires while the holder is paused

    stale_row = ReconcileRun.objects.get(controller=Gated.name, outcome="running")  # visible while it runs
    newer = run_controller(Gated.name, force=True, trigger="test")  # force: the paused run holds the anchor
    assert newer.outcome == "success"
    assert writes(Gated.name) == 1
    # The newer grant found the paused run still marked running: abandoned, for now.
    stale_row.refresh_from_db()
    assert (stale_row.outcome, stale_row.reason) == ("error", "abandoned")
    assert metric("runs_abandoned_total", controller=Gated.name) >= 1
    Gated.gate.set()  # the paused holder resumes and tries to commit its write
    paused.join(timeout=30)
    old = out[0]
    assert (old.outcome, old.reason) == ("error", "lock_lost")
    assert old.fence is not None
    assert newer.fence is not None
    assert old.fence < newer.fence
    assert writes(Gated.name) == 1  # the paused holder's insert rolled back
    assert old.run_id == stale_row.pk  # its own end replaces "abandoned": it knows better
    stale_row.refresh_from_db()
    assert (stale_row.outcome, stale_row.reason) == ("error", "lock_lost")
    assert "LockLostError" in stale_row.error
    assert metric("lock_lost_total", controller=Gated.name) >= 1


@pytest.mark.django_db(transaction=True)
def test_renewal_keeps_a_run_of_three_ttls_exclusive(settings: Any) -> None:
    settings.RECONCILERS_LOCK_TTL_SECONDS = 0.6
    hold(1.9)  # > 3 x TTL
    long_run, out = in_thread(run_controller, Sleeper.name, trigger="test")
    time.sleep(0.1)
    attempts = []
    while long_run.is_alive():
        attempts.append(run_controller(Sleeper.name, force=True, trigger="test"))
        time.sleep(0.1)
    long_run.join()
    assert out[0].outcome == "success"
    assert len(attempts) >= 10
    # An attempt that raced the long run's release may run after it; none ran during it.
    during = attempts[:-1]
    assert all((a.outcome, a.reason) == ("skipped", "locked") for a in during)
    assert writes(Sleeper.name) == 1 + sum(a.outcome == "success" for a in attempts)


def test_redis_unreachable_skips_without_writes(settings: Any) -> None:
    fence_before = fence_current(Sleeper.name)
    good_url = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{NOTHING_LISTENS_PORT}/0"
    summary = run_controller(Sleeper.name, trigger="test")
    assert (summary.outcome, summary.reason) == ("skipped", "lock_unavailable")
    assert writes() == 0
    assert fence_current(Sleeper.name) == fence_before
    assert metric("reconcile_skipped_total", controller=Sleeper.name, reason="lock_unavailable") >= 1
    settings.REDIS_URL = good_url
    assert run_controller(Sleeper.name, trigger="test").outcome == "success"
    assert writes() == 1


def test_redis_stopped_then_restarted(settings: Any, private_redis: RedisServer) -> None:
    private_redis.start()
    settings.REDIS_URL = private_redis.url()
    assert run_controller(Sleeper.name, trigger="test").outcome == "success"
    private_redis.stop()
    summary = run_controller(Sleeper.name, force=True, trigger="test")
    assert (summary.outcome, summary.reason) == ("skipped", "lock_unavailable")
    assert writes() == 1
    private_redis.start()
    assert run_controller(Sleeper.name, force=True, trigger="test").outcome == "success"
    assert writes() == 2


def test_raising_controller_is_recorded_and_isolated() -> None:
    errors_before = metric("reconcile_errors_total", controller="test-raiser")
    summary = run_controller("test-raiser", trigger="test")
    assert (summary.outcome, summary.reason) == ("error", "exception")
    run = ReconcileRun.objects.get(pk=summary.run_id)
    assert "Traceback" in run.error
    assert "boom from the test controller" in run.error
    assert metric("reconcile_errors_total", controller="test-raiser") == errors_before + 1
    assert metric("reconcile_total", controller="test-raiser", result="error") >= 1
    assert metric("running", controller="test-raiser") == 0
    assert run_controller(Sleeper.name, trigger="test").outcome == "success"
    assert run_controller("test-other", trigger="test").outcome == "success"


def test_too_soon_and_dry_runs_never_count(settings: Any) -> None:
    first = run_controller(Sleeper.name, trigger="test")
    assert first.outcome == "success"
    again = run_controller(Sleeper.name, trigger="test")
    assert (again.outcome, again.reason) == ("skipped", "too_soon")
    dry = run_controller(Sleeper.name, dry_run=True, trigger="test")
    assert (dry.outcome, dry.dry_run, dry.items) == ("success", True, 0)
    assert dict(dry.steps) == {"written": 0}
    assert dict(dry.would_change) == {"written": 1}
    assert writes() == 1  # the dry run rolled back
    anchor = ReconcilerState.objects.get(controller=Sleeper.name).last_real_started_at
    assert anchor == ReconcileRun.objects.get(pk=first.run_id).started_at  # dry run did not move it
    forced = run_controller(Sleeper.name, force=True, trigger="test")
    assert forced.outcome == "success"
    # Once the previous successful real start is a full interval back, it runs again.
    ReconcilerState.objects.filter(controller=Sleeper.name).update(
        last_real_started_at=db_now() - timedelta(seconds=Sleeper.default_interval_seconds)
    )
    assert run_controller(Sleeper.name, trigger="test").outcome == "success"


def test_failed_run_does_not_become_the_anchor(monkeypatch: Any) -> None:
    def broken(self: Sleeper, ctx: Any) -> Any:
        raise ValueError("transient")

    with monkeypatch.context() as patch:
        patch.setattr(Sleeper, "reconcile", broken)
        assert run_controller(Sleeper.name, trigger="test").outcome == "error"
    assert ReconcilerState.objects.get(controller=Sleeper.name).last_real_started_at is None
    assert run_controller(Sleeper.name, trigger="test").outcome == "success"


def test_config_dry_run_flag_decides_unless_overridden() -> None:
    config_update(Sleeper.name, {"dry_run": True}, actor="user:test")
    assert run_controller(Sleeper.name, trigger="test").dry_run is True
    assert writes() == 0
    assert run_controller(Sleeper.name, dry_run=False, trigger="test").dry_run is False
    assert writes() == 1


def test_pause_and_disabled_skip_and_force_runs(settings: Any) -> None:
    pause_set(True, actor="user:test")
    summary = run_controller(Sleeper.name, trigger="test")
    assert (summary.outcome, summary.reason) == ("skipped", "paused")
    assert run_controller(Sleeper.name, force=True, trigger="test").outcome == "success"
    pause_set(False, actor="user:test")
    settings.RECONCILERS_PAUSED = True
    assert run_controller("test-other", trigger="test").reason == "paused"
    settings.RECONCILERS_PAUSED = False
    config_update("test-other", {"enabled": False}, actor="user:test")
    assert run_controller("test-other", trigger="test").reason == "disabled"
    assert run_controller("test-other", force=True, trigger="test").outcome == "success"
    assert ReconcileRun.objects.filter(outcome="skipped", reason__in=["paused", "disabled"]).count() == 3


def test_missing_config_row_runs_on_defaults() -> None:
    ReconcilerConfig.objects.filter(controller=Sleeper.name).delete()
    summary = run_controller(Sleeper.name, trigger="test")
    assert summary.outcome == "success"
    assert writes() == 1


def test_run_timeout_stops_at_a_checkpoint() -> None:
    config_update(Sleeper.name, {"run_timeout_seconds": 1, "params": {"hold_seconds": 3}}, actor="user:test")
    summary = run_controller(Sleeper.name, trigger="test")
    assert (summary.outcome, summary.reason) == ("error", "timeout")
    assert summary.duration_s < 2.5
    assert writes() == 0


def test_prune_deletes_old_runs_in_batches_with_few_queries() -> None:
    now = db_now()
    old = now - timedelta(days=settings.RECONCILERS_RUN_HISTORY_DAYS + 1)
    ReconcileRun.objects.bulk_create(
        [
            ReconcileRun(controller=Sleeper.name, started_at=old - timedelta(seconds=i), outcome="success")
            for i in range(10_000)
        ],
        batch_size=2000,
    )
    ReconcileRun.objects.bulk_create(
        [
            ReconcileRun(controller=Sleeper.name, started_at=now - timedelta(minutes=i), outcome="success")
            for i in range(10)
        ]
    )
    ReconcileRun.objects.create(controller="test-other", started_at=old, outcome="success")
    with CaptureQueriesContext(connection) as queries:
        deleted = run_history_prune(Sleeper.name)
    assert deleted == 10_000
    assert ReconcileRun.objects.filter(controller=Sleeper.name).count() == 10
    assert ReconcileRun.objects.filter(controller="test-other").count() == 1  # another controller's own job
    deletes = [q for q in queries.captured_queries if q["sql"].upper().startswith("DELETE")]
    assert len(deletes) == 11  # 10 full batches of 1000 and the empty one that ends it
    assert len(queries.captured_queries) < 50


def test_runner_prunes_after_a_run_at_most_once_per_interval(monkeypatch: Any) -> None:
    monkeypatch.setattr(runner, "_pruned_at", {})
    old = db_now() - timedelta(days=settings.RECONCILERS_RUN_HISTORY_DAYS, minutes=1)
    ReconcileRun.objects.create(controller=Sleeper.name, started_at=old, outcome="success")
    run_controller(Sleeper.name, trigger="test", force=True)
    assert not ReconcileRun.objects.filter(controller=Sleeper.name, started_at=old).exists()

    ReconcileRun.objects.create(controller=Sleeper.name, started_at=old, outcome="success")
    run_controller(Sleeper.name, trigger="test", force=True)
    assert ReconcileRun.objects.filter(controller=Sleeper.name, started_at=old).exists()  # too soon

    monkeypatch.setattr(runner, "PRUNE_INTERVAL_SECONDS", 0.0)
    run_controller(Sleeper.name, trigger="test", force=True)
    assert not ReconcileRun.objects.filter(controller=Sleeper.name, started_at=old).exists()


def test_unknown_controller_raises_before_anything_runs() -> None:
    from reconcilers.registry import UnknownControllerError

    with pytest.raises(UnknownControllerError, match="test-sleeper"):
        run_controller("nosuch", trigger="test")
    assert WRITE_ACTION  # the module's marker is importable for other tests


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_write_transactions_are_bounded_by_the_lock_ttl_on_the_server() -> None:
    """A statement that outlives the lock (minus a margin) is cancelled by PostgreSQL itself,
    and the bound is local to the write transaction."""
    from django.db import OperationalError

    from reconcilers.runtime.context import RunContext
    from reconcilers.runtime.fencing import fence_grant

    ctx = RunContext(
        controller=Sleeper.name,
        now=db_now(),
        fence=fence_grant(Sleeper.name, "test").fence,
        params={},
        statement_timeout_seconds=2.5,
    )
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        before = cursor.fetchone()[0]
    with ctx.transaction(), connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "1500ms"
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == "1500ms"
    started = time.monotonic()
    with (
        pytest.raises(OperationalError, match="statement timeout"),
        ctx.transaction(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT pg_sleep(10)")
    assert time.monotonic() - started < 5
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == before
