"""Scenario 3, outages under the in-process manager (`manage.py runcontrollers`).

Redis is used only for locks here (no broker), so what a Redis outage does is visible in
the run history: the private redis-server is stopped for `outage_seconds` while every
controller runs at 1-2 s. Invariants: every controller records `lock_unavailable` skips
during the outage, none succeeds while Redis is down (never unlocked), no run fails with
an exception, the process stays up, and each controller succeeds again within one
interval (plus the manager's jitter and a small tolerance) after Redis is back.

Then the manager's database connections are cut (pg_terminate_backend) while a slowed
audit-retention run is in progress: that run is recorded as an error or leaves no row,
its open batch is rolled back, and every controller succeeds again afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import time
from datetime import timedelta
from typing import Any

from django.db import connection

from controlplane.common.db import db_now
from reconcilers.models import ReconcileRun, RunOutcome, RunReason
from reconcilers.runtime.fencing import fence_current
from stress import checks, db
from stress.base import Report, StressEnv, configure, data_reset, first_traceback, traceback_count, wait_until
from stress.kill import (
    BATCH_SIZE,
    RETENTION_DAYS,
    SLOW_DELETE_SECONDS,
    _insert,
    _recovered,
    _remaining,
    _run_row,
    _whole_batches,
)
from stress.procs import ProcessSet, RedisServer

INTERVALS = {
    "agent-health": 1,
    "job-recovery": 2,
    "queue-priority": 1,
    "token-cleanup": 2,
    "audit-retention": 2,
}
MANAGER_APP = f"{db.WORKER_APP_PREFIX}-manager"
JITTER_FRACTION = 0.1  # the manager's default
RECOVERY_TOLERANCE_SECONDS = 2.0  # a run's own duration and a loaded 2-core machine
LOCK_TTL_SECONDS = 5


def _first_success_after(name: str, at: Any) -> ReconcileRun | None:
    return (
        ReconcileRun.objects.filter(controller=name, started_at__gte=at, outcome=RunOutcome.SUCCESS)
        .order_by("started_at")
        .first()
    )


def run(env: StressEnv, *, outage_seconds: float = 10.0, settle_seconds: float = 10.0) -> Report:
    report = Report("outages: Redis stopped, PostgreSQL connections terminated (runcontrollers)")
    log_dir = env.log_dir / "outage"
    redis_server = RedisServer(env.redis_port, log_dir)
    procs = ProcessSet(
        log_dir,
        env.subprocess_env(app=MANAGER_APP, RECONCILERS_LOCK_TTL_SECONDS=str(LOCK_TTL_SECONDS)),
    )
    data_reset()
    configure(
        {
            name: {
                "interval_seconds": interval,
                "run_timeout_seconds": interval,  # a run may not outlast its period
                **(
                    {"params": {"retention_days": RETENTION_DAYS, "batch_size": BATCH_SIZE}}
                    if name == "audit-retention"
                    else {}
                ),
            }
            for name, interval in INTERVALS.items()
        }
    )
    since = db_now()
    started = time.monotonic()
    manager = None
    try:
        redis_server.start()
        manager = procs.manage("runcontrollers", "runcontrollers")
        warm = wait_until(lambda: all(_first_success_after(n, since) for n in INTERVALS), 90, 0.5)
        report.check(bool(warm), "not every controller succeeded before the outage (warm-up)")
        if warm:
            _redis_outage(report, redis_server, outage_seconds, settle_seconds)
            _terminate_connections(report)
        report.check(manager.alive(), "runcontrollers died")
    finally:
        if manager is not None and manager.alive():
            manager.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                manager.popen.wait(timeout=30)
        report.figures["runcontrollers_exit_code"] = manager.popen.poll() if manager else None
        procs.stop_all()
        redis_server.stop()
        db.slow_deletes_uninstall()
    runs = checks.runs_load(since, INTERVALS)
    log_text = manager.log_text() if manager else ""
    tracebacks = traceback_count(log_text)
    report.figures.update(
        {
            "runs": checks.outcome_counts(runs),
            "overlaps": len(checks.overlaps(runs)),
            "tracebacks_in_log": tracebacks,
            "duration_s": round(time.monotonic() - started, 1),
        }
    )
    report.check(report.figures["runcontrollers_exit_code"] == 0, "runcontrollers did not exit 0 on SIGTERM")
    report.check(
        tracebacks == 0,
        f"{tracebacks} tracebacks in the runcontrollers log (an exception escaped); the first:\n"
        f"{first_traceback(log_text)}",
    )
    report.check(report.figures["overlaps"] == 0, "overlapping successful runs")
    return report


def _redis_outage(report: Report, redis_server: RedisServer, outage_seconds: float, settle: float) -> None:
    redis_server.stop()
    down = db_now()
    time.sleep(outage_seconds)
    back_requested = db_now()
    redis_server.start()
    up = db_now()
    time.sleep(max(settle, 2 * max(INTERVALS.values()) + RECOVERY_TOLERANCE_SECONDS))
    window = ReconcileRun.objects.filter(controller__in=list(INTERVALS), started_at__gte=down)
    unavailable = {
        n: window.filter(
            controller=n, started_at__lt=back_requested, reason=RunReason.LOCK_UNAVAILABLE
        ).count()
        for n in INTERVALS
    }
    unlocked = window.filter(started_at__lt=back_requested, outcome=RunOutcome.SUCCESS).count()
    exceptions = window.filter(outcome=RunOutcome.ERROR, reason=RunReason.EXCEPTION).count()
    lock_lost = window.filter(outcome=RunOutcome.ERROR, reason=RunReason.LOCK_LOST).count()
    delays: dict[str, float | None] = {}
    for name, interval in INTERVALS.items():
        first = _first_success_after(name, up)
        delay = (first.started_at - up).total_seconds() if first else None
        delays[name] = round(delay, 2) if delay is not None else None
        allowed = interval * (1 + JITTER_FRACTION) + RECOVERY_TOLERANCE_SECONDS
        report.check(
            delay is not None and delay <= allowed,
            f"{name}: first success {delay} s after Redis came back (allowed {allowed:.1f} s)",
        )
        report.check(unavailable[name] > 0, f"{name}: no lock_unavailable skip during the outage")
    report.figures.update(
        {
            "redis_outage_s": round((back_requested - down).total_seconds(), 1),
            "lock_unavailable_skips_during_outage": unavailable,
            "successes_while_redis_down": unlocked,
            "exception_errors_around_outage": exceptions,
            "lock_lost_errors_around_outage": lock_lost,
            "first_success_after_redis_back_s": delays,
        }
    )
    report.check(unlocked == 0, f"{unlocked} runs succeeded while Redis was down (unlocked runs)")
    report.check(exceptions == 0, f"{exceptions} runs failed with an exception around the outage")


def _terminate_connections(report: Report) -> None:
    name = "audit-retention"
    db.slow_deletes_install(SLOW_DELETE_SECONDS)
    fence_before = fence_current(name)
    ids = _insert(40 * BATCH_SIZE, timedelta(days=400), "terminate")

    def in_progress() -> int | None:
        fence = fence_current(name)
        left = len(_remaining(ids))
        if fence > fence_before and len(ids) - left >= 5 * BATCH_SIZE and left > 5 * BATCH_SIZE:
            return None if _run_row(fence) else fence
        return None

    fence = wait_until(in_progress, 60, 0.05)
    if fence is None:
        report.violations.append("terminate: no audit-retention run in progress within 60 s")
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND state IN ('active', 'idle in transaction')",
            [MANAGER_APP],
        )
        terminated = cursor.rowcount
    cut = db_now()
    time.sleep(0.5)
    whole, deleted = _whole_batches(ids, _remaining(ids))
    recovered = wait_until(lambda: _recovered(ids, fence), 90, 0.25)
    others = wait_until(lambda: all(_first_success_after(n, cut) for n in INTERVALS), 30, 0.5)
    faulted = _run_row(fence)
    report.figures.update(
        {
            "terminated_manager_backends": terminated,
            "terminate_deleted_before_cut": f"{deleted} rows = {deleted / BATCH_SIZE:g} batches",
            "terminate_faulted_run": f"{faulted.outcome}:{faulted.reason}" if faulted else "no row",
            "every_controller_succeeded_after_cut": bool(others),
        }
    )
    report.check(whole, f"terminate: committed deletes are not whole batches ({deleted} rows)")
    report.check(
        bool(recovered), "terminate: no successful audit-retention run finished the purge afterwards"
    )
    report.check(
        faulted is None or faulted.outcome == RunOutcome.ERROR,
        f"terminate: the cut-off run was recorded as {faulted.outcome if faulted else None}",
    )
    report.check(
        bool(others), "terminate: not every controller succeeded again after the connections were cut"
    )
