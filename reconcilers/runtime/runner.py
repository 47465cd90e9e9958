"""The runner: one reconcile of one controller, with every cross-cutting concern in one place.

Order (design.md §4): config -> global pause -> disabled -> lock -> fencing token ->
too-soon claim -> database clock -> reconcile -> record the run -> metrics -> release ->
prune history. The runner is handed a Controller and knows no registry: the reconciler
app's `run_controller(name)` resolves a name, and Celery tasks, the CLI, the admin and
the in-process manager all go through it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q

from controlplane.common.db import db_now
from reconcilers.models import ReconcilerState, ReconcileRun, RunReason
from reconcilers.runtime.config import EffectiveConfig, config_effective, paused_globally
from reconcilers.runtime.context import RunContext, reconcile_in_context
from reconcilers.runtime.contract import (
    Controller,
    ControllerParams,
    LockLostError,
    ReconcileResult,
    RunTimeoutError,
)
from reconcilers.runtime.fencing import fence_current, fence_grant
from reconcilers.runtime.lock import LockRenewer, LockUnavailableError, lock_acquire, lock_ttl_seconds
from reconcilers.runtime.metrics import Metrics, metrics
from reconcilers.runtime.summary import RunSummary

log = logging.getLogger(__name__)

PRUNE_BATCH_ROWS = 1000  # rows per history delete: a short statement on the (controller, started_at) index
PRUNE_MAX_BATCHES = 100  # per run; a larger backlog continues at the next run
# History is kept for days, so pruning after every run of a 30 s controller only adds a
# statement to each run; once per controller and process every few minutes is ample.
PRUNE_INTERVAL_SECONDS = 300.0
_pruned_at: dict[str, float] = {}  # controller -> time.monotonic() of this process's last prune


def worker_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run(
    controller: Controller,
    *,
    dry_run: bool | None = None,
    force: bool = False,
    ignore_brake: bool = False,
    trigger: str = "manual",
    metrics_sink: Metrics | None = None,
) -> RunSummary:
    """Run one reconcile of `controller` through the full runtime and record it.

    `dry_run` None means the config's flag decides. `force` bypasses paused, disabled and
    too_soon, never the lock. No exception escapes: the outcome is in the summary and in a
    ReconcileRun row.
    """
    sink = metrics_sink or metrics()
    started = time.monotonic()
    try:
        return _Run(controller, sink, dry_run, force, ignore_brake, trigger, started).execute()
    except Exception as exc:  # the database itself failed: nothing could be recorded
        log.exception("%s: run failed outside the controller", controller.name)
        sink.increment_reconcile_errors(controller.name)
        sink.record_reconcile(controller.name, 0, time.monotonic() - started, exc)
        return RunSummary.error(
            controller.name,
            RunReason.EXCEPTION,
            dry_run=bool(dry_run),
            fence=None,
            duration_s=time.monotonic() - started,
            error_text=traceback.format_exc(),
        )


class _Run:
    """One run's state while it executes (kept off the public surface)."""

    def __init__(
        self,
        controller: Controller,
        sink: Metrics,
        dry_run: bool | None,
        force: bool,
        ignore_brake: bool,
        trigger: str,
        started: float,
    ) -> None:
        self.controller = controller
        self.name = controller.name
        self.sink = sink
        self.requested_dry_run = dry_run
        self.force = force
        self.ignore_brake = ignore_brake
        self.trigger = trigger
        self.started = started
        self.host = worker_host()
        self.clock: datetime | None = None  # the last database time this run read

    def execute(self) -> RunSummary:
        config = config_effective(self.controller)
        # Published by every run too, so each worker's gauges follow config changes.
        self.sink.set_config(
            self.name,
            enabled=config.enabled,
            dry_run=config.dry_run,
            interval_seconds=config.interval_seconds,
        )
        dry_run = config.dry_run if self.requested_dry_run is None else self.requested_dry_run
        if not self.force and paused_globally():
            return self.skip(RunReason.PAUSED, dry_run)
        if not self.force and not config.enabled:
            return self.skip(RunReason.DISABLED, dry_run)
        try:
            held = lock_acquire(self.name)
        except LockUnavailableError as exc:
            log.warning("%s: skipped, lock backend unavailable: %s", self.name, exc)
            return self.skip(RunReason.LOCK_UNAVAILABLE, dry_run)
        if held is None:
            return self.skip(RunReason.LOCKED, dry_run)
        lost = threading.Event()
        renewer = LockRenewer(held, lost).start()
        try:
            return self.run_holding_lock(config, dry_run, lost)
        finally:
            renewer.stop()
            held.release()
            self.prune()

    def params(self, config: EffectiveConfig) -> ControllerParams:
        if config.params is not None:
            return config.params
        log.error("%s: invalid params in the database, using defaults: %s", self.name, config.error)
        return self.controller.default_params()

    def run_holding_lock(self, config: EffectiveConfig, dry_run: bool, lost: threading.Event) -> RunSummary:
        grant = fence_grant(self.name, self.host)
        fence = grant.fence
        started_at = grant.at  # the run's one clock: every step's cutoffs use it
        claimed = False
        if not dry_run:
            claimed = self.anchor_claim(fence, started_at, config.period_seconds)
            if not claimed:
                if fence_current(self.name) != fence:
                    return self.fail(
                        started_at, dry_run, fence, LockLostError("newer grant before start"), ""
                    )
                if not self.force:
                    return self.skip(RunReason.TOO_SOON, dry_run, started_at=started_at, fence=fence)
        ctx = RunContext(
            controller=self.name,
            now=started_at,
            fence=fence,
            params=self.params(config),
            dry_run=dry_run,
            ignore_brake=self.ignore_brake,
            timeout_seconds=float(config.run_timeout_seconds),
            statement_timeout_seconds=lock_ttl_seconds(),
            lock_lost=lost,
        )
        self.sink.set_controller_running(self.name, True)
        try:
            result = reconcile_in_context(self.controller, ctx)
        except Exception as exc:
            if claimed:
                self.anchor_restore(started_at, grant.last_real_started_at)
            return self.fail(started_at, dry_run, fence, exc, traceback.format_exc())
        finally:
            self.sink.set_controller_running(self.name, False)
        return self.succeed(started_at, dry_run, fence, result)

    def anchor_claim(self, fence: int, started_at: datetime, period_seconds: int) -> bool:
        """Atomically: is the previous successful real start far enough back, and if so make
        this start the anchor (design.md §4.5). Fenced, so a holder that lost its grant
        cannot move it. A forced run moves the anchor without the gap condition."""
        gap = timedelta(seconds=settings.RECONCILERS_MIN_GAP_FRACTION * period_seconds)
        rows = ReconcilerState.objects.filter(controller=self.name, fence=fence)
        if not self.force:
            rows = rows.filter(
                Q(last_real_started_at__isnull=True) | Q(last_real_started_at__lte=started_at - gap)
            )
        return bool(rows.update(last_real_started_at=started_at))

    def anchor_restore(self, started_at: datetime, previous: datetime | None) -> None:
        """A failed run must not count as the too-soon anchor: put the previous one back,
        unless someone has claimed a newer anchor since."""
        ReconcilerState.objects.filter(controller=self.name, last_real_started_at=started_at).update(
            last_real_started_at=previous
        )

    def succeed(self, started_at: datetime, dry_run: bool, fence: int, result: ReconcileResult) -> RunSummary:
        finished_at = self.clock = db_now()
        duration = time.monotonic() - self.started
        summary = RunSummary.success(self.name, result, dry_run=dry_run, fence=fence, duration_s=duration)
        run = self.record(summary, started_at, finished_at)
        self.sink.record_reconcile(self.name, summary.items, duration, None)
        self.sink.set_last_reconcile_time(self.name, finished_at)
        self.sink.set_brake_engaged(self.name, summary.flags.get("brake_engaged", False))
        if dry_run:
            self.sink.set_dry_run_pending_items(self.name, sum(summary.would_change.values()))
        log.info(
            "%s: %s run done trigger=%s items=%d steps=%s would_change=%s flags=%s fence=%d %.3fs",
            self.name,
            "dry" if dry_run else "real",
            self.trigger,
            summary.items,
            dict(summary.steps),
            dict(summary.would_change),
            dict(summary.flags),
            fence,
            duration,
        )
        return replace(summary, run_id=run.pk)

    def fail(
        self, started_at: datetime, dry_run: bool, fence: int, exc: BaseException, error_text: str
    ) -> RunSummary:
        reason = _error_reason(exc)
        log.error("%s: run failed (%s): %s", self.name, reason, exc)
        finished_at = self.clock = db_now()
        duration = time.monotonic() - self.started
        summary = RunSummary.error(
            self.name,
            reason,
            dry_run=dry_run,
            fence=fence,
            duration_s=duration,
            error_text=error_text or f"{type(exc).__name__}: {exc}",
        )
        run = self.record(summary, started_at, finished_at)
        self.sink.record_reconcile(self.name, 0, duration, exc)
        self.sink.increment_reconcile_errors(self.name)
        if reason == RunReason.LOCK_LOST:
            self.sink.increment_lock_lost(self.name)
        return replace(summary, run_id=run.pk)

    def skip(
        self, reason: str, dry_run: bool, *, started_at: datetime | None = None, fence: int | None = None
    ) -> RunSummary:
        at = self.clock = started_at or db_now()
        summary = RunSummary.skipped(
            self.name, reason, dry_run=dry_run, fence=fence, duration_s=time.monotonic() - self.started
        )
        run = self.record(summary, at, at)
        self.sink.record_skip(self.name, reason)
        log.info("%s: skipped (%s) trigger=%s", self.name, reason, self.trigger)
        return replace(summary, run_id=run.pk)

    def record(self, summary: RunSummary, started_at: datetime, finished_at: datetime) -> ReconcileRun:
        """The run's history row (design.md §4.10)."""
        return ReconcileRun.objects.create(
            controller=self.name,
            started_at=started_at,
            finished_at=finished_at,
            outcome=summary.outcome,
            reason=summary.reason or "",
            items=summary.items,
            steps=dict(summary.steps),
            would_change=dict(summary.would_change),
            flags=dict(summary.flags),
            dry_run=summary.dry_run,
            forced=self.force,
            fence=summary.fence,
            worker_host=self.host,
            error=summary.error_text,
        )

    def prune(self) -> None:
        last = _pruned_at.get(self.name)
        if last is not None and time.monotonic() - last < PRUNE_INTERVAL_SECONDS:
            return
        _pruned_at[self.name] = time.monotonic()
        cutoff = None
        if self.clock is not None:  # saves a clock read: the run just read the database time
            cutoff = self.clock - timedelta(days=settings.RECONCILERS_RUN_HISTORY_DAYS)
        try:
            run_history_prune(self.name, older_than=cutoff)
        except DatabaseError:
            log.exception("%s: run history pruning failed (retried at the next run)", self.name)


def run_history_prune(
    controller: str,
    *,
    older_than: datetime | None = None,
    batch_rows: int = PRUNE_BATCH_ROWS,
    max_batches: int = PRUNE_MAX_BATCHES,
) -> int:
    """Delete the controller's runs started before the retention cutoff, oldest first, in
    batches picked through the (controller, started_at) index: one DELETE per batch,
    never a query per row. Returns the number of rows deleted."""
    cutoff = older_than or db_now() - timedelta(days=settings.RECONCILERS_RUN_HISTORY_DAYS)
    deleted = 0
    for _ in range(max_batches):
        batch = ReconcileRun.objects.filter(controller=controller, started_at__lt=cutoff).order_by(
            "started_at"
        )[:batch_rows]
        # One DELETE ... WHERE id IN (SELECT ... LIMIT n), atomic by itself: no collector,
        # no transaction round trips (run rows have no dependents).
        doomed = ReconcileRun.objects.filter(pk__in=batch.values("pk"))
        count = int(doomed._raw_delete(doomed.db))
        deleted += count
        if count < batch_rows:
            break
    if deleted:
        log.info("%s: pruned %d runs older than %s", controller, deleted, cutoff.isoformat())
    return deleted


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, LockLostError):
        return RunReason.LOCK_LOST
    if isinstance(exc, RunTimeoutError) or type(exc).__name__ == "SoftTimeLimitExceeded":
        return RunReason.TIMEOUT
    return RunReason.EXCEPTION
