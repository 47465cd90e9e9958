"""The runner: one reconcile of one controller, with every cross-cutting concern in one place.

Order (design.md §4): config -> global pause -> disabled -> invalid config -> lock (renewed
while the run shows progress, liveness.py) -> the session's timeouts -> fencing token and
database clock -> close abandoned runs -> too-soon claim -> running row -> reconcile (each
batch updates the row) -> record the end -> metrics -> timeouts reset -> release -> prune.
The runner is handed a Controller and knows no registry: the reconciler app's
`run_controller(name)` resolves a name, and Celery tasks, the CLI, the admin and the
in-process manager all go through it.
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
from django.db import DatabaseError, connection
from django.db.models import Q

from controlplane.common.db import connection_recover, db_now
from controlplane.common.logs import log_context, log_context_bind
from reconcilers.models import ReconcilerState, ReconcileRun, RunOutcome, RunReason
from reconcilers.runtime.config import EffectiveConfig, config_effective, paused_globally
from reconcilers.runtime.context import ProgressSink, RunContext, reconcile_in_context
from reconcilers.runtime.contract import (
    Controller,
    ControllerParams,
    LockLostError,
    ReconcileResult,
    RunTimeoutError,
)
from reconcilers.runtime.fencing import Grant, fence_current, fence_grant
from reconcilers.runtime.liveness import (
    Progress,
    progress_bound_seconds,
    session_timeouts_apply,
    session_timeouts_reset,
)
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
    task_id: str = "",
    progress: ProgressSink | None = None,
) -> RunSummary:
    """Run one reconcile of `controller` through the full runtime and record it.

    `dry_run` None means the config's flag decides. `force` bypasses paused, disabled and
    too_soon, never an invalid config and never the lock. `progress` is told the run's
    counts after each batch. No exception escapes: the outcome is in the summary and in a
    ReconcileRun row.
    """
    sink = metrics_sink or metrics()
    one = _Run(controller, sink, dry_run, force, ignore_brake, trigger, time.monotonic(), progress)
    one.task_id = task_id[:255]  # the Celery message's id, kept on the run row
    # Every line logged during the run, by any logger, carries these (and run_id and fence
    # once the run has them): an operator filters one run's lines by run_id.
    with log_context(controller=controller.name, trigger=trigger):
        try:
            return one.execute()
        except Exception as exc:  # the database failed outside the reconcile itself
            return one.fail_outside(exc, traceback.format_exc())


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
        progress_sink: ProgressSink | None = None,
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
        self.task_id = ""
        self.clock: datetime | None = None  # the last database time this run read
        self.row_id: int | None = None  # the history row, once the run holds its grant
        self.grant: Grant | None = None
        self.ctx: RunContext | None = None
        self.lost = threading.Event()  # set by the renewer: the lock was lost or given up
        self.progress: Progress | None = None  # the run's last sign of life, once it holds the lock
        self.progress_sink = progress_sink  # told of each committed batch

    def execute(self) -> RunSummary:
        connection_recover()  # a connection the server closed during the previous run
        config = config_effective(self.controller)
        dry_run = config.dry_run if self.requested_dry_run is None else self.requested_dry_run
        if not self.force and paused_globally():
            return self.skip(RunReason.PAUSED, dry_run)
        if not self.force and not config.enabled:
            return self.skip(RunReason.DISABLED, dry_run)
        if config.params is None:
            return self.refuse(config, dry_run)
        try:
            held = lock_acquire(self.name)
        except LockUnavailableError as exc:
            log.warning("%s: skipped, lock backend unavailable: %s", self.name, exc)
            return self.skip(RunReason.LOCK_UNAVAILABLE, dry_run)
        if held is None:
            return self.skip(RunReason.LOCKED, dry_run)
        progress = self.progress = Progress(progress_bound_seconds(held.ttl_seconds))
        renewer = LockRenewer(held, self.lost, progress).start()
        try:
            with progress.watching():
                session_timeouts_apply(held.ttl_seconds)
                return self.run_holding_lock(config, config.params, dry_run, self.lost)
        finally:
            renewer.stop()
            self.connection_drop_if_interrupted()
            session_timeouts_reset()
            held.release()
            self.prune()

    def refuse(self, config: EffectiveConfig, dry_run: bool) -> RunSummary:
        """A config row that fails its schema is refused, never replaced by the defaults: the
        run ends as error `invalid_config` and changes nothing (design.md §4.2)."""
        at = self.clock = db_now()
        summary = RunSummary.error(
            self.name,
            RunReason.INVALID_CONFIG,
            dry_run=dry_run,
            fence=None,
            duration_s=time.monotonic() - self.started,
            error_text=f"invalid config: {config.error}",
        )
        row = self.record(summary, at, at)
        log_context_bind(run_id=row.pk)
        log.error("%s: run refused, its config row is invalid: %s", self.name, config.error)
        self.sink.record_reconcile(self.name, 0, summary.duration_s, InvalidConfigError(config.error))
        self.sink.increment_reconcile_errors(self.name)
        return replace(summary, run_id=row.pk)

    def run_holding_lock(
        self, config: EffectiveConfig, params: ControllerParams, dry_run: bool, lost: threading.Event
    ) -> RunSummary:
        grant = self.grant = fence_grant(self.name, self.host)
        fence = grant.fence
        log_context_bind(fence=fence)
        started_at = grant.at  # the run's one clock: every step's cutoffs use it
        self.abandon_older(grant)
        claimed = False
        if not dry_run:
            claimed = self.anchor_claim(fence, started_at, config.period_at(started_at))
            if not claimed:
                if fence_current(self.name) != fence:
                    return self.fail(LockLostError("newer grant before start"), "", dry_run)
                if not self.force:
                    return self.skip(RunReason.TOO_SOON, dry_run, started_at=started_at, fence=fence)
        self.row_id = self.running_row(started_at, dry_run, fence).pk
        log_context_bind(run_id=self.row_id)
        ctx = self.ctx = RunContext(
            controller=self.name,
            now=started_at,
            fence=fence,
            params=params,
            dry_run=dry_run,
            ignore_brake=self.ignore_brake,
            timeout_seconds=float(config.run_timeout_seconds),
            statement_timeout_seconds=lock_ttl_seconds(),
            lock_lost=lost,
            run_id=self.row_id,
            progress=self.progress,
            progress_sink=self.progress_sink,
        )
        self.sink.set_controller_running(self.name, True)
        try:
            result = reconcile_in_context(self.controller, ctx)
            if lost.is_set():
                # Its renewal stopped (the run looked stuck) or failed while the last steps ran:
                # the lock may already be another holder's, so this is no success (§4.4).
                raise LockLostError(f"{self.name}: lock renewal stopped before the run ended")
        except Exception as exc:
            error_text = traceback.format_exc()
            self.connection_drop_if_interrupted()
            connection_recover()
            if claimed:
                self.anchor_restore(started_at, grant.last_real_started_at)
            return self.fail(exc, error_text, dry_run)
        finally:
            self.sink.set_controller_running(self.name, False)
        return self.succeed(started_at, dry_run, fence, result)

    def abandon_older(self, grant: Grant) -> None:
        """Close the rows of earlier grants still marked running: their process stopped without
        recording an end (killed, host lost) or is a stale holder, which overwrites this with
        its own end (lock_lost) if it ever resumes."""
        abandoned = ReconcileRun.objects.filter(
            controller=self.name, outcome=RunOutcome.RUNNING, fence__lt=grant.fence
        ).update(
            outcome=RunOutcome.ERROR,
            reason=RunReason.ABANDONED,
            finished_at=grant.at,
            error=f"still running when grant {grant.fence} was taken ({self.host}): its process "
            "stopped without recording an end; items are what it had committed",
        )
        if abandoned:
            log.warning("%s: closed %d abandoned run(s) of earlier grants", self.name, abandoned)
            self.sink.increment_runs_abandoned(self.name, abandoned)

    def running_row(self, started_at: datetime, dry_run: bool, fence: int) -> ReconcileRun:
        """The run's history row from the moment it holds its grant (design.md §4.10)."""
        return ReconcileRun.objects.create(
            controller=self.name,
            started_at=started_at,
            outcome=RunOutcome.RUNNING,
            dry_run=dry_run,
            forced=self.force,
            fence=fence,
            worker_host=self.host,
            task_id=self.task_id,
        )

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

    def fail(self, exc: BaseException, error_text: str, dry_run: bool) -> RunSummary:
        """The run stopped (timeout, lock lost, an exception): it ends as error with the reason
        and what its batches committed, which the metrics count too."""
        reason = _error_reason(exc)
        if reason != RunReason.LOCK_LOST and (self.lost.is_set() or self.superseded()):
            # A stale holder (paused past its lock, stuck on a dead database socket until its
            # renewal stopped, then hit by its timeout, Celery's soft limit, a connection
            # error or an error its successor's writes caused) ends as lock_lost: that is
            # what happened; the error text keeps the rest (design.md §4.10).
            reason = RunReason.LOCK_LOST
        finished_at = self.clock = db_now()
        duration = time.monotonic() - self.started
        committed = self.ctx.committed if self.ctx is not None and not dry_run else {}
        summary = RunSummary.error(
            self.name,
            reason,
            dry_run=dry_run,
            fence=self.grant.fence if self.grant else None,
            duration_s=duration,
            error_text=error_text or f"{type(exc).__name__}: {exc}",
            steps=committed,
        )
        started_at = self.grant.at if self.grant else finished_at
        run = self.record(summary, started_at, finished_at)
        log_context_bind(run_id=run.pk)
        log.error("%s: run failed (%s): %s", self.name, reason, exc)
        self.sink.record_reconcile(self.name, summary.items, duration, exc)
        self.sink.increment_reconcile_errors(self.name)
        if reason == RunReason.LOCK_LOST:
            self.sink.increment_lock_lost(self.name)
        return replace(summary, run_id=run.pk)

    def superseded(self) -> bool:
        """Whether a newer grant exists than this run's (False before the grant)."""
        if self.grant is None:
            return False
        try:
            return fence_current(self.name) != self.grant.fence
        except DatabaseError:
            return False

    def fail_outside(self, exc: BaseException, error_text: str) -> RunSummary:
        """The database failed where no reconcile was running (reading the config, recording
        the end): record the end if a fresh connection can, else only the metrics."""
        dry_run = bool(self.requested_dry_run)
        try:
            self.connection_drop_if_interrupted()
            connection_recover()
            # Recorded with its traceback on the run row: the log line stays one line.
            return self.fail(exc, error_text, dry_run)
        except Exception:
            log.error("%s: run failed outside the controller: %s", self.name, error_text.rstrip())
            log.exception("%s: and its end could not be recorded", self.name)
        duration = time.monotonic() - self.started
        self.sink.increment_reconcile_errors(self.name)
        self.sink.record_reconcile(self.name, 0, duration, exc)
        return RunSummary.error(
            self.name,
            _error_reason(exc),
            dry_run=dry_run,
            fence=self.grant.fence if self.grant else None,
            duration_s=duration,
            error_text=error_text,
            run_id=self.row_id,
        )

    def connection_drop_if_interrupted(self) -> None:
        """A statement cut short by something other than a database error (Celery's soft limit
        raised while the driver waited on a dead socket) leaves the connection mid-protocol:
        every later query on it would fail or hang, so drop it and record on a fresh one."""
        if self.progress is not None and self.progress.interrupted and not connection.in_atomic_block:
            self.progress.interrupted = False
            connection.close()

    def skip(
        self, reason: str, dry_run: bool, *, started_at: datetime | None = None, fence: int | None = None
    ) -> RunSummary:
        at = self.clock = started_at or db_now()
        summary = RunSummary.skipped(
            self.name, reason, dry_run=dry_run, fence=fence, duration_s=time.monotonic() - self.started
        )
        run = self.record(summary, at, at)
        log_context_bind(run_id=run.pk)
        self.sink.record_skip(self.name, reason)
        log.info("%s: skipped (%s) trigger=%s", self.name, reason, self.trigger)
        return replace(summary, run_id=run.pk)

    def record(self, summary: RunSummary, started_at: datetime, finished_at: datetime) -> ReconcileRun:
        """The run's history row as it ended (design.md §4.10): the running row when there is
        one (this process's end overwrites an `abandoned` written meanwhile by a newer grant),
        else a new row."""
        values = {
            "controller": self.name,
            "started_at": started_at,
            "finished_at": finished_at,
            "outcome": summary.outcome,
            "reason": summary.reason or "",
            "items": summary.items,
            "steps": dict(summary.steps),
            "would_change": dict(summary.would_change),
            "flags": dict(summary.flags),
            "dry_run": summary.dry_run,
            "forced": self.force,
            "fence": summary.fence,
            "worker_host": self.host,
            "error": summary.error_text,
            "task_id": self.task_id,
        }
        if self.row_id is not None and ReconcileRun.objects.filter(pk=self.row_id).update(**values):
            return ReconcileRun(pk=self.row_id, **values)
        return ReconcileRun.objects.create(**values)

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


class InvalidConfigError(Exception):
    """What the metrics record for a run refused because its config row is invalid."""


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, LockLostError):
        return RunReason.LOCK_LOST
    if isinstance(exc, RunTimeoutError) or type(exc).__name__ == "SoftTimeLimitExceeded":
        return RunReason.TIMEOUT
    return RunReason.EXCEPTION
