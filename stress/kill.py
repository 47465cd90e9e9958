"""Scenario 2, faults in the middle of a reconcile: SIGKILL, SIGSTOP past the lock TTL, and
pg_terminate_backend, each hitting a long batched audit-retention run under Celery.

audit-retention runs every 2 s with batch_size 50 and an archive folder; a test-only
trigger makes every batch's DELETE sleep, so one run over thousands of old rows lasts
seconds. Three phases, each on a fresh set of old rows:

A. SIGKILL the pool process holding the run: the lock stays until its TTL, the next run
   completes; sampled right after the kill (before any newer grant), the committed
   deletes are whole batches only (the open batch was rolled back) and all archived.
B. SIGSTOP the holder for longer than the lock TTL, then SIGCONT: a newer holder takes
   over; the resumed run must end as error lock_lost and commit nothing (fence).
C. pg_terminate_backend on the holder's connection: that run is an error or leaves no
   row, nothing is half-written, and the next run succeeds.

At the end a row-by-row comparison against the snapshot: every old row is gone and in
the archive (at most twice, only for a batch cut off before its commit; readers dedupe by
id), every young row is untouched, and the write audit shows no write with a stale fence.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from controlplane.audit.models import AuditLog
from controlplane.common.db import db_now
from reconcilers.models import ReconcilerState, ReconcileRun, RunOutcome, RunReason
from reconcilers.runtime.fencing import fence_current
from stress import checks, db
from stress.base import Report, StressEnv, configure, data_reset, wait_until
from stress.procs import ProcessSet, RedisServer

NAME = "audit-retention"
INTERVAL_SECONDS = 2
BATCH_SIZE = 50
LOCK_TTL_SECONDS = 5
SLOW_DELETE_SECONDS = 0.05  # per batch: 120 batches last at least 6 s
RETENTION_DAYS = 30
YOUNG_ROWS = 200
MIN_BATCHES_BEFORE_FAULT = 5
PHASE_TIMEOUT_SECONDS = 180.0


def _insert(count: int, age: timedelta, tag: str) -> list[int]:
    at = db_now() - age
    rows = AuditLog.objects.bulk_create(
        (
            AuditLog(
                created_at=at,
                actor="user:stress",
                action=f"stress.{tag}",
                resource_type="stress",
                resource_id=str(i),
                details={"n": i, "tag": tag},
            )
            for i in range(count)
        ),
        batch_size=2000,
    )
    return sorted(int(row.pk) for row in rows)


def _snapshot(ids: list[int] | None = None) -> dict[int, tuple[Any, ...]]:
    rows = AuditLog.objects.all() if ids is None else AuditLog.objects.filter(pk__in=ids)
    return {
        r["id"]: (
            r["created_at"].isoformat(),
            r["actor"],
            r["action"],
            r["resource_type"],
            r["resource_id"],
            json.dumps(r["details"], sort_keys=True),
            r["success"],
        )
        for r in rows.values(
            "id", "created_at", "actor", "action", "resource_type", "resource_id", "details", "success"
        )
    }


def _archived(folder: Path) -> tuple[Counter[int], dict[int, tuple[Any, ...]], int, int]:
    """Ids in the archive files (with their count), their content, files, leftover temp files."""
    counts: Counter[int] = Counter()
    content: dict[int, tuple[Any, ...]] = {}
    files = temp = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            temp += 1
            continue
        files += 1
        with gzip.open(path, "rt") as fh:
            for line in fh:
                r = json.loads(line)
                counts[r["id"]] += 1
                content[r["id"]] = (
                    r["created_at"],
                    r["actor"],
                    r["action"],
                    r["resource_type"],
                    r["resource_id"],
                    json.dumps(r["details"], sort_keys=True),
                    r["success"],
                )
    return counts, content, files, temp


def _remaining(ids: list[int]) -> set[int]:
    return set(AuditLog.objects.filter(pk__in=ids).values_list("pk", flat=True))


def _holder_in_progress(fence_before: int, ids: list[int]) -> tuple[int, int] | None:
    """(fence, pid) of a run past fence_before that has committed some batches of `ids`
    and is not done yet."""
    state = ReconcilerState.objects.filter(controller=NAME).values("fence", "lock_holder").first()
    if not state or state["fence"] <= fence_before:
        return None
    left = AuditLog.objects.filter(pk__in=ids).count()
    deleted = len(ids) - left
    if deleted < MIN_BATCHES_BEFORE_FAULT * BATCH_SIZE or left < 10 * BATCH_SIZE:
        return None
    if _run_row(state["fence"]) is not None:
        return None  # that run already finished
    return int(state["fence"]), int(state["lock_holder"].rsplit(":", 1)[1])


def _whole_batches(ids: list[int], remaining: set[int]) -> tuple[bool, int]:
    """Committed deletes are a prefix of the ids (oldest first) made of whole batches."""
    deleted = [i for i in ids if i not in remaining]
    prefix_ok = deleted == ids[: len(deleted)]
    return prefix_ok and len(deleted) % BATCH_SIZE == 0, len(deleted)


def _run_row(fence: int) -> ReconcileRun | None:
    """The ended run of a grant (a running row is not an end yet)."""
    return (
        ReconcileRun.objects.filter(controller=NAME, fence=fence).exclude(outcome=RunOutcome.RUNNING).first()
    )


def _recovered(ids: list[int], fence: int) -> bool:
    return (
        not _remaining(ids)
        and ReconcileRun.objects.filter(controller=NAME, fence__gt=fence, outcome=RunOutcome.SUCCESS).exists()
    )


def _backends_of_the_run() -> list[int]:
    """Connections of the worker processes that are inside a transaction right now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND state IN ('active', 'idle in transaction') "
            "AND pid <> pg_backend_pid()",
            [db.WORKER_APP_PREFIX],
        )
        return [row[0] for row in cursor.fetchall()]


def run(env: StressEnv, *, rows_per_phase: int = 6000) -> Report:
    report = Report("mid-run faults: SIGKILL, SIGSTOP past the TTL, pg_terminate_backend")
    assert rows_per_phase % BATCH_SIZE == 0
    log_dir = env.log_dir / "kill"
    archive = log_dir / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    for stale in archive.iterdir():
        stale.unlink()
    redis_server = RedisServer(env.redis_port, log_dir)
    # archive_dir is confined to AUDIT_ARCHIVE_ROOT: the same root here (the config is saved
    # and checked in this process) and in the workers.
    settings.AUDIT_ARCHIVE_ROOT = str(log_dir)
    procs = ProcessSet(
        log_dir,
        env.subprocess_env(
            RECONCILERS_LOCK_TTL_SECONDS=str(LOCK_TTL_SECONDS), AUDIT_ARCHIVE_ROOT=str(log_dir)
        ),
    )
    data_reset()
    configure(
        {
            NAME: {
                "interval_seconds": INTERVAL_SECONDS,
                # A run may not outlast its period: a long purge goes on at the next tick.
                "run_timeout_seconds": INTERVAL_SECONDS,
                "params": {
                    "retention_days": RETENTION_DAYS,
                    "batch_size": BATCH_SIZE,
                    "archive_dir": archive.name,
                },
            }
        }
    )
    young = _insert(YOUNG_ROWS, timedelta(days=1), "young")
    snapshot: dict[int, tuple[Any, ...]] = _snapshot(young)
    old_ids: list[int] = []
    since = db_now()
    db.write_audit_install()
    db.slow_deletes_install(SLOW_DELETE_SECONDS)
    stopped_pid: int | None = None
    started = time.monotonic()
    try:
        redis_server.start()
        procs.celery_worker("worker", concurrency=2, queue="reconcilers")
        procs.celery_beat("beat")
        for phase in ("sigkill", "sigstop", "terminate"):
            fence_before = fence_current(NAME)
            ids = _insert(rows_per_phase, timedelta(days=400), phase)
            snapshot.update(_snapshot(ids))
            old_ids += ids
            holder = wait_until(functools.partial(_holder_in_progress, fence_before, ids), 90, 0.05)
            if holder is None:
                report.violations.append(f"{phase}: no run in progress to fault within 90 s")
                break
            fence, pid = holder
            fault_at = db_now()
            if phase == "sigkill":
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
                _check_rolled_back(report, phase, ids, fence, archive)
            elif phase == "sigstop":
                os.kill(pid, signal.SIGSTOP)
                stopped_pid = pid
                time.sleep(LOCK_TTL_SECONDS + 3)
                report.figures["sigstop_newer_grants_while_paused"] = fence_current(NAME) - fence
                os.kill(pid, signal.SIGCONT)
                stopped_pid = None
            else:
                backends = _backends_of_the_run()
                with connection.cursor() as cursor:
                    for backend in backends:
                        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
                report.figures["terminated_backends"] = len(backends)
                time.sleep(0.5)
                _check_rolled_back(report, phase, ids, fence, archive)
            if not wait_until(functools.partial(_recovered, ids, fence), PHASE_TIMEOUT_SECONDS, 0.25):
                report.violations.append(f"{phase}: no successful run removed the rows after the fault")
                break
            first = (
                ReconcileRun.objects.filter(controller=NAME, fence__gt=fence, outcome=RunOutcome.SUCCESS)
                .order_by("started_at")
                .first()
            )
            assert first is not None
            faulted = wait_until(functools.partial(_run_row, fence), 30 if phase == "sigstop" else 0.1)
            report.figures[f"{phase}_recovery_s"] = round((first.started_at - fault_at).total_seconds(), 2)
            report.figures[f"{phase}_faulted_run"] = (
                f"{faulted.outcome}:{faulted.reason}" if faulted else "no row (process or connection gone)"
            )
            if phase == "sigstop":
                # A stale holder learns at its next commit or checkpoint that a newer grant
                # exists: lock_lost, never an exception (an empty batch included).
                report.check(
                    faulted is not None
                    and (faulted.outcome, faulted.reason) == (RunOutcome.ERROR, RunReason.LOCK_LOST),
                    f"sigstop: the resumed run must end as error/lock_lost, got {faulted and faulted.reason}",
                )
            elif faulted is not None:
                report.check(
                    faulted.outcome == RunOutcome.ERROR,
                    f"{phase}: the faulted run was recorded as {faulted.outcome}",
                )
            report.figures[f"{phase}_locked_skips_after_fault"] = ReconcileRun.objects.filter(
                controller=NAME,
                started_at__gte=fault_at,
                started_at__lt=first.started_at,
                reason=RunReason.LOCKED,
            ).count()
    finally:
        if stopped_pid is not None:
            os.kill(stopped_pid, signal.SIGCONT)
        procs.stop_all()
        redis_server.stop()
        db.slow_deletes_uninstall()
    try:
        _final_checks(report, snapshot, young, old_ids, archive, since)
    finally:
        db.write_audit_uninstall()
    report.figures["duration_s"] = round(time.monotonic() - started, 1)
    return report


def _check_rolled_back(report: Report, phase: str, ids: list[int], fence: int, archive: Path) -> None:
    remaining = _remaining(ids)
    sampled_alone = fence_current(NAME) == fence
    whole, deleted = _whole_batches(ids, remaining)
    archived, _content, _files, _temp = _archived(archive)
    lost = [i for i in ids if i not in remaining and i not in archived]
    report.figures[f"{phase}_deleted_before_fault"] = f"{deleted} rows = {deleted / BATCH_SIZE:g} batches" + (
        "" if sampled_alone else " (sampled after a newer grant)"
    )
    report.check(
        whole, f"{phase}: committed deletes are not whole batches ({deleted} rows): half-written batch"
    )
    report.check(not lost, f"{phase}: {len(lost)} rows deleted without an archive copy")


def _final_checks(
    report: Report,
    snapshot: dict[int, tuple[Any, ...]],
    young: list[int],
    old_ids: list[int],
    archive: Path,
    since: Any,
) -> None:
    now_rows = _snapshot()
    still_old = [i for i in old_ids if i in now_rows]
    changed_young = [i for i in young if now_rows.get(i) != snapshot[i]]
    archived, content, files, temp = _archived(archive)
    missing = [i for i in old_ids if archived[i] == 0]
    twice = [i for i, n in archived.items() if n == 2]
    more = [i for i, n in archived.items() if n > 2]
    altered = [i for i in archived if i in snapshot and content[i] != snapshot[i]]
    young_archived = [i for i in young if archived[i]]
    unknown = [i for i in archived if i not in snapshot]
    runs = checks.runs_load(since, [NAME])
    overlaps = checks.overlaps(runs)
    audit = db.fence_audit_read()
    report.figures.update(
        {
            "rows_checked": len(snapshot),
            "old_rows_deleted": len(old_ids) - len(still_old),
            "young_rows_untouched": len(young) - len(changed_young),
            "archive_files": files,
            "archive_temp_files_left": temp,
            "rows_archived_twice": len(twice),
            "runs": checks.outcome_counts(runs).get(NAME, {}),
            "overlaps": len(overlaps),
            "fence_grants": audit.grants,
            "controller_write_transactions": audit.write_transactions,
            "unfenced_write_transactions": len(audit.unfenced_transactions),
            "stale_fence_commits": len(audit.stale_commits),
        }
    )
    report.check(not still_old, f"{len(still_old)} old rows survived")
    report.check(
        not changed_young, f"{len(changed_young)} young rows changed or deleted: {changed_young[:5]}"
    )
    report.check(not missing, f"{len(missing)} deleted rows are in no archive file: {missing[:5]}")
    report.check(not more, f"{len(more)} rows archived more than twice")
    report.check(
        len(twice) <= 3 * BATCH_SIZE, f"{len(twice)} rows archived twice: more than one batch per fault"
    )
    report.check(not altered, f"{len(altered)} archived rows differ from the database rows: {altered[:5]}")
    report.check(not young_archived, f"{len(young_archived)} young rows were archived")
    report.check(not unknown, f"{len(unknown)} archived ids were never old rows")
    report.violations += [f"overlap: {checks.describe_pair(p)}" for p in overlaps[:10]]
    report.violations += [
        f"unfenced controller write in transaction {t}" for t in audit.unfenced_transactions[:10]
    ]
    report.violations += [
        f"{c}: write committed with fence {f} after grant {g}" for c, f, g in audit.stale_commits[:10]
    ]
