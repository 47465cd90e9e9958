"""The per-run context handed to a controller: clock (design.md §4.7), params, fenced transactions,
checkpoints and timeouts (§4.8), dry-run rollback (§4.6)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from reconcilers.models import ReconcileRun
from reconcilers.runtime.contract import Controller, LockLostError, ReconcileResult, RunTimeoutError
from reconcilers.runtime.fencing import fence_check, fence_current
from reconcilers.runtime.liveness import (
    Progress,
    idle_in_transaction_timeout_seconds,
    statement_timeout_seconds,
)

LOGGED_IDS_MAX = 50  # affected ids logged per step at DEBUG, so a million-row step stays one line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunProgress:
    """A running run's counts after one more batch committed (or, in a dry run, ran)."""

    controller: str
    run_id: int | None
    fence: int
    dry_run: bool
    batches: int
    items: int
    steps: dict[str, int]
    elapsed_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller,
            "run_id": self.run_id,
            "fence": self.fence,
            "dry_run": self.dry_run,
            "batches": self.batches,
            "items": self.items,
            "steps": dict(self.steps),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


# Told after each batch (the Celery task sends it as an event); never allowed to stop a run.
ProgressSink = Callable[[RunProgress], None]


@dataclass
class RunContext:
    """Concrete ReconcileContext built by the runner (and by tests that drive a controller)."""

    controller: str
    now: datetime
    fence: int
    params: Any
    dry_run: bool = False
    ignore_brake: bool = False
    timeout_seconds: float = 3600.0
    statement_timeout_seconds: float | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("reconcilers"))
    lock_lost: threading.Event = field(default_factory=threading.Event)
    started_monotonic: float = field(default_factory=time.monotonic)
    run_id: int | None = None  # the run's history row, kept equal to what has committed
    progress: Progress | None = None  # stamped at each checkpoint: the run is alive (liveness.py)
    committed: dict[str, int] = field(default_factory=dict)  # per step, in committed batches
    progress_sink: ProgressSink | None = None  # told of each committed batch (events, bars)
    batches: int = 0  # outermost transactions that completed
    _pending: dict[str, int] | None = field(default=None, repr=False)  # the open batch's tally

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.checkpoint()
        if self._pending is not None:  # nested: the outermost transaction owns the tally
            with transaction.atomic():
                yield
            return
        pending: dict[str, int] = {}
        self._pending = pending
        try:
            with transaction.atomic():
                self._apply_server_timeouts()
                yield
                fence_check(self.controller, self.fence)
                self._progress_write(pending)
        finally:
            self._pending = None
        for step, count in pending.items():
            self.committed[step] = self.committed.get(step, 0) + count
        self.batches += 1
        if pending:  # a batch that changed nothing moves no count: nothing to tell
            self._progress_notify()

    def _progress_notify(self) -> None:
        """After the batch's transaction: whoever watches hears of it once it is visible in
        the run row. A broken watcher (broker down) is logged, never fails the run."""
        if self.progress_sink is None:
            return
        progress = RunProgress(
            controller=self.controller,
            run_id=self.run_id,
            fence=self.fence,
            dry_run=self.dry_run,
            batches=self.batches,
            items=sum(self.committed.values()),
            steps=dict(self.committed),
            elapsed_seconds=time.monotonic() - self.started_monotonic,
        )
        try:
            self.progress_sink(progress)
        except Exception as exc:
            log.warning("%s: progress not reported (the run goes on): %s", self.controller, exc)

    def tally(self, step: str, count: int) -> None:
        if self._pending is None:
            raise RuntimeError(f"{self.controller}: tally({step!r}) outside ctx.transaction()")
        if count:
            self._pending[step] = self._pending.get(step, 0) + count

    def _progress_write(self, pending: dict[str, int]) -> None:
        """In the batch's own transaction: the run row's steps and items become the committed
        counts plus this batch's, so the row always equals what has committed. A dry run's
        writes roll back, so it shows no live progress (design.md §4.10)."""
        if self.run_id is None or self.dry_run or not pending:
            return
        steps = dict(self.committed)
        for step, count in pending.items():
            steps[step] = steps.get(step, 0) + count
        ReconcileRun.objects.filter(pk=self.run_id).update(steps=steps, items=sum(steps.values()))

    def log_step(self, step: str, count: int, ids: Sequence[int] = ()) -> None:
        params = self.params.model_dump(mode="json") if hasattr(self.params, "model_dump") else self.params
        level = logging.WARNING if self.dry_run and count else logging.INFO
        self.log.log(
            level,
            "%s step=%s count=%d dry_run=%s fence=%d params=%s",
            self.controller,
            step,
            count,
            self.dry_run,
            self.fence,
            params,
            extra={"controller": self.controller, "step": step, "count": count, "dry_run": self.dry_run},
        )
        if ids and self.log.isEnabledFor(logging.DEBUG):
            shown = list(ids[:LOGGED_IDS_MAX])
            more = f" (+{len(ids) - len(shown)} more)" if len(ids) > len(shown) else ""
            self.log.debug("%s step=%s ids=%s%s", self.controller, step, shown, more)

    def checkpoint(self) -> None:
        if self.progress is not None:
            self.progress.stamp()
        if self.lock_lost.is_set():
            raise LockLostError(f"{self.controller}: lock renewal failed")
        if time.monotonic() - self.started_monotonic > self.timeout_seconds:
            # A holder frozen past its lock (SIGSTOP, a long GC pause) resumes past its run
            # timeout too; it must learn first that it lost the lock (design.md §4.4).
            if fence_current(self.controller) != self.fence:
                raise LockLostError(f"{self.controller}: a newer grant exists (found at the run timeout)")
            raise RunTimeoutError(f"{self.controller}: run exceeded {self.timeout_seconds:g}s")

    def _apply_server_timeouts(self) -> None:
        if connection.vendor != "postgresql" or not self.statement_timeout_seconds:
            return
        # Kept below the lock TTL so a paused holder cannot block a new one indefinitely
        # (threads and libpq waits cannot be interrupted from Python; the server can).
        millis = int(statement_timeout_seconds(self.statement_timeout_seconds) * 1000)
        idle = int(idle_in_transaction_timeout_seconds(self.statement_timeout_seconds) * 1000)
        with connection.cursor() as cursor:
            # set_config(..., true) is SET LOCAL: it holds for this batch's transaction only, so
            # it also holds behind PgBouncer's transaction pooling, where the run's session
            # settings (liveness.session_timeouts_apply) may land on another server connection.
            # All three in one round trip, once per batch.
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),"
                " set_config('idle_in_transaction_session_timeout', %s, true)",
                [f"{millis}ms", f"{millis}ms", f"{idle}ms"],
            )


def reconcile_in_context(controller: Controller, ctx: RunContext) -> ReconcileResult:
    """Run one reconcile. A dry run executes the real steps inside an outer transaction
    that is always rolled back, so its counts are exactly what a real run would change."""
    if not ctx.dry_run:
        return controller.reconcile(ctx)
    with transaction.atomic():
        result = controller.reconcile(ctx)
        transaction.set_rollback(True)
    return result
