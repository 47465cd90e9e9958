"""The runner: one reconcile of one controller, with every cross-cutting concern in one place.

Order: config (defaults if the row is missing) -> global pause -> disabled -> lock ->
fencing token -> too-soon claim -> database clock -> reconcile -> record the run ->
metrics -> release -> prune history. Celery tasks, the CLI, the admin and the in-process
manager all call `run_controller`; nothing else runs a controller.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from pydantic import ValidationError

from controlplane.common.db import db_now
from reconcilers import registry
from reconcilers.models import (
    ReconcilerConfig,
    ReconcilerState,
    ReconcileRun,
    RunOutcome,
    RunReason,
    RuntimeSwitch,
)
from reconcilers.runtime.context import RunContext, reconcile_in_context
from reconcilers.runtime.contract import Controller, ControllerParams, LockLostError, RunTimeoutError
from reconcilers.runtime.fencing import fence_current, grant_take
from reconcilers.runtime.lock import LockRenewer, LockUnavailableError, lock_acquire, lock_ttl_seconds
from reconcilers.runtime.metrics import Metrics, metrics

log = logging.getLogger(__name__)

RUN_TIMEOUT_CAP_SECONDS = 3600  # default run timeout is min(interval, this)
PRUNE_BATCH_ROWS = 1000  # rows per history delete: a short statement on the (controller, started_at) index
PRUNE_MAX_BATCHES = 100  # per run; a larger backlog continues at the next run
# History is kept for days, so pruning after every run of a 30 s controller only adds a
# statement to each run; once per controller and process every few minutes is ample.
PRUNE_INTERVAL_SECONDS = 300.0
_pruned_at: dict[str, float] = {}  # controller -> time.monotonic() of this process's last prune


@dataclass(frozen=True)
class EffectiveConfig:
    """The config a run uses: the database row, or the controller's defaults if it is missing."""

    enabled: bool
    interval_seconds: int
    dry_run: bool
    run_timeout_seconds: int
    params: ControllerParams


@dataclass(frozen=True)
class RunSummary:
    """What one run did. `as_json()` has exactly the CLI's keys (SPEC section 6)."""

    controller: str
    outcome: str
    reason: str | None
    items: int
    steps: Mapping[str, int]
    dry_run: bool
    would_change: Mapping[str, int]
    flags: Mapping[str, bool]
    fence: int | None
    duration_s: float
    run_id: int | None = None
    error: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("steps", "would_change", "flags"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def as_json(self) -> dict[str, Any]:
        return {
            "controller": self.controller,
            "outcome": self.outcome,
            "reason": self.reason,
            "items": self.items,
            "steps": dict(self.steps),
            "dry_run": self.dry_run,
            "would_change": dict(self.would_change),
            "flags": dict(self.flags),
            "fence": self.fence,
            "duration_s": self.duration_s,
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON keys plus run_id (what a Celery task returns, so Flower shows it)."""
        return {**self.as_json(), "run_id": self.run_id}


def worker_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def config_effective(controller: Controller) -> EffectiveConfig:
    """Read the controller's config row; fall back to its defaults (row missing or params
    no longer valid after a hand edit, logged)."""
    row = ReconcilerConfig.objects.filter(name=controller.name).first()
    if row is None:
        interval = controller.default_interval_seconds
        return EffectiveConfig(
            enabled=True,
            interval_seconds=interval,
            dry_run=False,
            run_timeout_seconds=min(interval, RUN_TIMEOUT_CAP_SECONDS),
            params=controller.default_params(),
        )
    try:
        params = controller.validate_params(row.params or {})
    except ValidationError as exc:
        log.error("%s: invalid params in the database, using defaults: %s", controller.name, exc)
        params = controller.default_params()
    return EffectiveConfig(
        enabled=row.enabled,
        interval_seconds=row.interval_seconds,
        dry_run=row.dry_run,
        run_timeout_seconds=row.run_timeout_seconds,
        params=params,
    )


def paused_globally() -> bool:
    if settings.RECONCILERS_PAUSED:
        return True
    return bool(RuntimeSwitch.objects.filter(pk=1).values_list("paused", flat=True).first())


def run_controller(
    name: str,
    *,
    dry_run: bool | None = None,
    force: bool = False,
    ignore_brake: bool = False,
    trigger: str = "manual",
    metrics_sink: Metrics | None = None,
) -> RunSummary:
    """Run one reconcile of controller `name` through the full runtime and record it.

    `dry_run` None means the config's flag decides. `force` bypasses paused, disabled and
    too_soon, never the lock. No exception escapes (an unknown name raises
    UnknownControllerError before anything runs); the outcome is in the summary and in a
    ReconcileRun row.
    """
    controller = registry.controller_get(name)
    sink = metrics_sink or metrics()
    started = time.monotonic()
    try:
        return _Run(controller, sink, dry_run, force, ignore_brake, trigger, started).execute()
    except Exception as exc:  # the database itself failed: nothing could be recorded
        log.exception("%s: run failed outside the controller", name)
        sink.increment_reconcile_errors(name)
        sink.record_reconcile(name, 0, time.monotonic() - started, exc)
        return RunSummary(
            controller=name,
            outcome=RunOutcome.ERROR,
            reason=RunReason.EXCEPTION,
            items=0,
            steps={},
            dry_run=bool(dry_run),
            would_change={},
            flags={},
            fence=None,
            duration_s=round(time.monotonic() - started, 6),
            error=traceback.format_exc(),
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
            return self.locked(config, dry_run, lost)
        finally:
            renewer.stop()
            held.release()
            self.prune()

    def locked(self, config: EffectiveConfig, dry_run: bool, lost: threading.Event) -> RunSummary:
        grant = grant_take(self.name, self.host)
        fence = grant.fence
        started_at = grant.at  # the run's one clock: every step's cutoffs use it
        previous_anchor = grant.last_real_started_at
        claimed = False
        if not dry_run:
            claimed = self.anchor_claim(fence, started_at, config.interval_seconds)
            if not claimed:
                if fence_current(self.name) != fence:
                    return self.finish(
                        started_at, dry_run, fence, None, LockLostError("newer grant before start"), ""
                    )
                if not self.force:
                    return self.skip(RunReason.TOO_SOON, dry_run, started_at=started_at, fence=fence)
        ctx = RunContext(
            controller=self.name,
            now=started_at,
            fence=fence,
            params=config.params,
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
                self.anchor_restore(started_at, previous_anchor)
            return self.finish(started_at, dry_run, fence, None, exc, traceback.format_exc())
        finally:
            self.sink.set_controller_running(self.name, False)
        return self.finish(started_at, dry_run, fence, result, None, "")

    def anchor_claim(self, fence: int, started_at: datetime, interval_seconds: int) -> bool:
        """Atomically: is the previous successful real start far enough back, and if so make
        this start the anchor. Fenced, so a holder that lost its grant cannot move it.
        A forced run moves the anchor without the gap condition."""
        gap = timedelta(seconds=settings.RECONCILERS_MIN_GAP_FRACTION * interval_seconds)
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

    def finish(
        self,
        started_at: datetime,
        dry_run: bool,
        fence: int,
        result: Any,
        exc: BaseException | None,
        error_text: str,
    ) -> RunSummary:
        steps: dict[str, int] = {}
        would_change: dict[str, int] = {}
        flags: dict[str, bool] = {}
        items = 0
        reason: str | None = None
        outcome = RunOutcome.SUCCESS
        if exc is not None:
            outcome = RunOutcome.ERROR
            reason = _error_reason(exc)
            error_text = error_text or f"{type(exc).__name__}: {exc}"
            log.error("%s: run failed (%s): %s", self.name, reason, exc)
        else:
            flags = {key: bool(value) for key, value in result.flags.items()}
            if dry_run:
                steps = dict.fromkeys(result.steps, 0)
                would_change = dict(result.steps)
            else:
                steps = dict(result.steps)
                items = int(result.items)
        finished_at = self.clock = db_now()
        duration = time.monotonic() - self.started
        run = ReconcileRun.objects.create(
            controller=self.name,
            started_at=started_at,
            finished_at=finished_at,
            outcome=outcome,
            reason=reason or "",
            items=items,
            steps=steps,
            would_change=would_change,
            flags=flags,
            dry_run=dry_run,
            forced=self.force,
            fence=fence,
            worker_host=self.host,
            error=error_text,
        )
        self.sink.record_reconcile(self.name, items, duration, exc)
        if exc is not None:
            self.sink.increment_reconcile_errors(self.name)
            if reason == RunReason.LOCK_LOST:
                self.sink.increment_lock_lost(self.name)
        else:
            self.sink.set_last_reconcile_time(self.name, finished_at)
            self.sink.set_brake_engaged(self.name, flags.get("brake_engaged", False))
            if dry_run:
                self.sink.set_dry_run_pending_items(self.name, sum(would_change.values()))
            log.info(
                "%s: %s run done trigger=%s items=%d steps=%s would_change=%s flags=%s fence=%d %.3fs",
                self.name,
                "dry" if dry_run else "real",
                self.trigger,
                items,
                steps,
                would_change,
                flags,
                fence,
                duration,
            )
        return RunSummary(
            controller=self.name,
            outcome=outcome,
            reason=reason,
            items=items,
            steps=steps,
            dry_run=dry_run,
            would_change=would_change,
            flags=flags,
            fence=fence,
            duration_s=round(duration, 6),
            run_id=run.pk,
            error=error_text,
        )

    def skip(
        self, reason: str, dry_run: bool, *, started_at: datetime | None = None, fence: int | None = None
    ) -> RunSummary:
        at = self.clock = started_at or db_now()
        run = ReconcileRun.objects.create(
            controller=self.name,
            started_at=at,
            finished_at=at,
            outcome=RunOutcome.SKIPPED,
            reason=reason,
            dry_run=dry_run,
            forced=self.force,
            fence=fence,
            worker_host=self.host,
        )
        self.sink.record_skip(self.name, reason)
        log.info("%s: skipped (%s) trigger=%s", self.name, reason, self.trigger)
        return RunSummary(
            controller=self.name,
            outcome=RunOutcome.SKIPPED,
            reason=reason,
            items=0,
            steps={},
            dry_run=dry_run,
            would_change={},
            flags={},
            fence=fence,
            duration_s=round(time.monotonic() - self.started, 6),
            run_id=run.pk,
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
