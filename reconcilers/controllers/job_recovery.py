"""job-recovery: nothing stays acknowledged or running forever, nothing waits in the queue forever.

Steps and reason codes: design.md §5.2.

Active jobs without progress, held by an agent that is gone, or (tenant commands)
acknowledged but never started are requeued while they have attempts left, and failed
with `retries_exhausted` once they do not. Attempts count claims (the claim increments
`dispatch_attempts`); recovery never increments them, so a job gets exactly
`max_retries` claims. Pending jobs expire after `max_queue_minutes` or at `expires_at`.
A job requeued by this run gets `queued_at` = the run's time and so is not expired by
the same run. Terminal jobs are never touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any, ClassVar

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce, Greatest
from pydantic import Field

from controlplane.agents.models import Agent, AgentHealth, AgentStatus
from controlplane.commands.models import ACTIVE_STATUSES, Command, CommandStatus, StatusReason
from controlplane.commands.retries import MAX_RETRIES_DEFAULT
from controlplane.commands.transitions import requeue_values, terminal_values, values_when
from reconcilers.queries.batches import Rows, update_in_batches, update_in_batches_returning
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

BATCH_SIZE = 5000  # commands per statement; one short transaction each (well under a second)
MINUTES_MAX = 10080  # one week


class JobRecoveryParams(ControllerParams):
    stuck_threshold_minutes: int = Field(
        30, ge=1, le=MINUTES_MAX, description="An active job without progress for longer is requeued."
    )
    tenant_stuck_threshold_minutes: int = Field(
        10, ge=1, le=MINUTES_MAX, description="A tenant command acknowledged but not started for longer."
    )
    max_retries: int = Field(
        MAX_RETRIES_DEFAULT, ge=1, le=100, description="Claims a job gets before it is failed."
    )
    max_queue_minutes: int = Field(
        60, ge=1, le=MINUTES_MAX, description="A pending job waiting longer expires."
    )


def _requeued_or_failed(step: str, rows: Rows) -> dict[str, int]:
    failed = sum(1 for _pk, status in rows if status == CommandStatus.FAILED)
    return {step: len(rows) - failed, "failed_exhausted": failed}


def _progress() -> Greatest:
    """Newest of last_progress_at, started_at, acknowledged_at; NULL only when all are NULL.

    Each argument is coalesced because SQLite's MAX() is NULL as soon as one argument is.
    """
    lp, st, ack = "last_progress_at", "started_at", "acknowledged_at"
    return Greatest(Coalesce(lp, st, ack), Coalesce(st, ack, lp), Coalesce(ack, lp, st))


class JobRecoveryController(Controller):
    name: ClassVar[str] = "job-recovery"
    default_interval_seconds: ClassVar[int] = 60
    step_names: ClassVar[tuple[str, ...]] = (
        "recovered_stuck",
        "recovered_holder_offline",
        "reassigned_not_picked_up",
        "failed_exhausted",
        "expired_in_queue",
        "expired_deadline",
    )
    Params: ClassVar[type[ControllerParams]] = JobRecoveryParams

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        params: JobRecoveryParams = ctx.params
        now = ctx.now
        triggers = self._triggers(now, params)
        counts: dict[str, int] = {}

        requeues = (
            (
                "recovered_stuck",
                StatusReason.STUCK,
                f"no progress for {params.stuck_threshold_minutes} minutes",
            ),
            ("recovered_holder_offline", StatusReason.HOLDER_OFFLINE, "holder agent offline or not active"),
            (
                "reassigned_not_picked_up",
                StatusReason.NOT_PICKED_UP,
                f"acknowledged but not started within {params.tenant_stuck_threshold_minutes} minutes",
            ),
        )
        # Rows an earlier trigger changed are pending or failed now, so no later trigger
        # matches them: each job is counted once, under the first trigger that took it.
        failed_values = terminal_values(
            status=CommandStatus.FAILED,
            at=now,
            reason=StatusReason.RETRIES_EXHAUSTED,
            message=f"exceeded maximum retry attempts ({params.max_retries})",
        )
        attempts_left = Q(dispatch_attempts__lt=params.max_retries)
        # The stuck trigger's `acknowledged_at < cutoff OR NULL` is no index range; its bound is.
        key_bounds = {"recovered_stuck": now - timedelta(minutes=params.stuck_threshold_minutes)}
        picks = {"recovered_holder_offline": self._holder_offline_picks()}
        failed_ids: list[int] = []
        for step, reason, why in requeues:
            requeue = requeue_values(at=now, reason=reason, message=f"{why}; requeued")
            rows = update_in_batches_returning(
                ctx,
                triggers[step],
                "acknowledged_at",
                BATCH_SIZE,
                values_when(attempts_left, requeue, failed_values),
                returning=("status",),
                # Requeued rows count for the trigger's step, failed ones for failed_exhausted.
                tally=partial(_requeued_or_failed, step),
                nulls_first=True,
                key_below=key_bounds.get(step),
                picked_from=picks.get(step),
                # Jobs of an offline holder are scattered among the healthy active jobs.
                sparse=step == "recovered_holder_offline",
            )
            requeued = [pk for pk, status in rows if status == CommandStatus.PENDING]
            failed_ids += [pk for pk, status in rows if status == CommandStatus.FAILED]
            ctx.log_step(step, len(requeued), requeued)
            counts[step] = len(requeued)
        ctx.log_step("failed_exhausted", len(failed_ids), failed_ids)
        counts["failed_exhausted"] = len(failed_ids)

        pending = Command.objects.filter(status=CommandStatus.PENDING)
        queue_cutoff = now - timedelta(minutes=params.max_queue_minutes)
        counts["expired_in_queue"] = self._apply(
            ctx,
            "expired_in_queue",
            pending.filter(queued_at__lt=queue_cutoff),
            "queued_at",
            terminal_values(
                status=CommandStatus.EXPIRED,
                at=now,
                reason=StatusReason.QUEUE_TIMEOUT,
                message=f"waited more than {params.max_queue_minutes} minutes in the queue",
            ),
        )
        # queued_at < now leaves out the jobs this run requeued (queued_at == now).
        counts["expired_deadline"] = self._apply(
            ctx,
            "expired_deadline",
            pending.filter(expires_at__lt=now, queued_at__lt=now),
            "expires_at",
            terminal_values(
                status=CommandStatus.EXPIRED,
                at=now,
                reason=StatusReason.DEADLINE_PASSED,
                message="deadline passed while waiting in the queue",
            ),
        )
        return self.result(
            recovered_stuck=counts["recovered_stuck"],
            recovered_holder_offline=counts["recovered_holder_offline"],
            reassigned_not_picked_up=counts["reassigned_not_picked_up"],
            failed_exhausted=counts["failed_exhausted"],
            expired_in_queue=counts["expired_in_queue"],
            expired_deadline=counts["expired_deadline"],
        )

    def _apply(
        self,
        ctx: ReconcileContext,
        step: str,
        candidates: QuerySet[Command],
        key: str,
        values: dict[str, Any],
    ) -> int:
        count, ids = update_in_batches(ctx, candidates, key, BATCH_SIZE, values, step=step, nulls_first=True)
        ctx.log_step(step, count, ids)
        return count

    @staticmethod
    def _triggers(now: datetime, params: JobRecoveryParams) -> dict[str, QuerySet[Command]]:
        """The three reasons an active job is taken back, as querysets (attempts not yet applied)."""
        active = Command.objects.filter(status__in=ACTIVE_STATUSES)
        stuck_cutoff = now - timedelta(minutes=params.stuck_threshold_minutes)
        tenant_cutoff = now - timedelta(minutes=params.tenant_stuck_threshold_minutes)
        holder_ok = Agent.objects.filter(
            pk=OuterRef("agent_id"), health=AgentHealth.ONLINE, status=AgentStatus.ACTIVE
        )
        return {
            # Progress >= acknowledged_at, so the plain bound on acknowledged_at lets the
            # active-commands index seek; the progress test is the real condition.
            "recovered_stuck": active.filter(Q(acknowledged_at__lt=stuck_cutoff) | Q(acknowledged_at=None))
            .alias(progress=_progress())
            .filter(Q(progress__lt=stuck_cutoff) | Q(progress=None)),
            "recovered_holder_offline": active.filter(~Exists(holder_ok)),
            "reassigned_not_picked_up": active.filter(
                is_platform_job=False,
                status=CommandStatus.ACKNOWLEDGED,
                started_at=None,
                acknowledged_at__lt=tenant_cutoff,
            ),
        }

    @staticmethod
    def _holder_offline_picks() -> QuerySet[Command]:
        """The holder-offline trigger's jobs, found from the few unhealthy agents (one hashed
        list) rather than by probing the holder of every active job. Same condition as the
        trigger's NOT EXISTS; each UPDATE still re-checks that per row."""
        unhealthy = Agent.objects.exclude(health=AgentHealth.ONLINE, status=AgentStatus.ACTIVE)
        return Command.objects.filter(status__in=ACTIVE_STATUSES).filter(
            Q(agent_id=None) | Q(agent_id__in=unhealthy.values("pk"))
        )
