"""queue-priority: keeps every waiting platform job's `queue_priority` equal to the formula (design.md §5.3).

Converges `queue_priority` of pending, unclaimed platform jobs to
`plan_base[plan] + wait_minutes * age_bonus_per_minute + max(0, depth_bonus_max - depth)`
(see `controlplane.commands.priority`, the Python reference). The age term is what makes
the queue fair: a free-plan job overtakes newer enterprise work after at most
(largest plan gap + depth_bonus_max) / age_bonus_per_minute minutes. Leaves alone tenant
commands (dispatched oldest first per agent), claimed jobs and rows whose value is
already right (no write, no version bump, so claimers see no churn).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from django.db import connection
from django.db.models import Count, Q, QuerySet
from pydantic import Field, field_validator

from controlplane.commands.models import Command, CommandStatus
from controlplane.commands.priority import (
    AGE_BONUS_PER_MINUTE_DEFAULT,
    DEPTH_BONUS_MAX_DEFAULT,
    PLAN_BASE_DEFAULT,
)
from controlplane.tenants.models import Plan
from reconcilers.queries.expressions import expression_sql, wait_minutes_expression
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

BATCH_SIZE = 5000  # jobs per UPDATE: one short transaction each; claimers skip locked rows, never wait
PlanName = Literal["free", "team", "business", "enterprise"]
PLAN_BASE_MAX = 10_000
PlanBase = Annotated[int, Field(ge=0, le=PLAN_BASE_MAX)]
Position = tuple[datetime, int]  # (queued_at, id): where a batch of waiting jobs ends


class QueuePriorityParams(ControllerParams):
    # The defaults are the domain's policy defaults (controlplane.commands.priority).
    plan_base: dict[PlanName, PlanBase] = Field(
        default_factory=lambda: dict(PLAN_BASE_DEFAULT),  # type: ignore[arg-type]
        description="Base priority per tenant plan (all four plans, each 0..10000).",
    )
    age_bonus_per_minute: int = Field(
        AGE_BONUS_PER_MINUTE_DEFAULT, ge=1, le=1000, description="Priority gained per whole minute waited."
    )
    depth_bonus_max: int = Field(
        DEPTH_BONUS_MAX_DEFAULT,
        ge=0,
        le=1000,
        description="Bonus for tenants with few waiting jobs: max(0, this - depth).",
    )

    @field_validator("plan_base")
    @classmethod
    def _every_plan(cls, value: dict[PlanName, int]) -> dict[PlanName, int]:
        missing = sorted(set(Plan.values) - set(value))
        if missing:
            raise ValueError(f"every plan needs a base priority; missing: {', '.join(missing)}")
        return value


def fairness_bound_minutes(params: QueuePriorityParams) -> float:
    """Longest a job waits behind newer work while claims keep up with arrivals
    (design.md §5.3; the reconciler app's services compare it with job-recovery's
    max_queue_minutes)."""
    gap = max(params.plan_base.values()) - min(params.plan_base.values())
    return (gap + params.depth_bonus_max) / params.age_bonus_per_minute


def waiting_platform_jobs() -> QuerySet[Command]:
    return Command.objects.filter(status=CommandStatus.PENDING, is_platform_job=True, agent__isnull=True)


class QueuePriorityController(Controller):
    name: ClassVar[str] = "queue-priority"
    default_interval_seconds: ClassVar[int] = 60
    step_names: ClassVar[tuple[str, ...]] = ("reprioritized",)
    Params: ClassVar[type[ControllerParams]] = QueuePriorityParams

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        params: QueuePriorityParams = ctx.params
        # Tenants first seen after the depth snapshot wait for the next run (their jobs
        # got the formula at enqueue); this keeps depth computed once per run.
        tenant_part = self._tenant_parts(params)
        wait_sql, wait_params = expression_sql(Command, wait_minutes_expression(ctx.now))
        changed_ids: list[int] = []
        after: Position | None = None
        while tenant_part:
            # A batch is a (queued_at, id) key range ending at the BATCH_SIZE-th waiting job:
            # the jobs stay candidates after their write, so the walk resumes after the
            # range, and the UPDATE takes the range itself (no id list through Python).
            through = self._batch_end(after)
            with ctx.transaction():
                batch = self._reprioritize(after, through, tenant_part, wait_sql, wait_params, params)
                ctx.tally("reprioritized", len(batch))
            changed_ids += batch
            if through is None:
                break
            after = through
        ctx.log_step("reprioritized", len(changed_ids), changed_ids)
        return self.result(reprioritized=len(changed_ids))

    @staticmethod
    def _batch_end(after: Position | None) -> Position | None:
        """The key of the BATCH_SIZE-th waiting job after `after`; None when fewer remain."""
        waiting = waiting_platform_jobs()
        if after is not None:
            queued_at, pk = after
            # The redundant `queued_at >= ...` is the sargable bound that lets the index seek.
            waiting = waiting.filter(
                Q(queued_at__gt=queued_at) | Q(queued_at=queued_at, pk__gt=pk), queued_at__gte=queued_at
            )
        ends = waiting.order_by("queued_at", "pk").values_list("queued_at", "pk")[BATCH_SIZE - 1 : BATCH_SIZE]
        return next(iter(ends), None)

    @staticmethod
    def _reprioritize(
        after: Position | None,
        through: Position | None,
        tenant_part: dict[int, int],
        wait_sql: str,
        wait_params: list[Any],
        params: QueuePriorityParams,
    ) -> list[int]:
        """One UPDATE for the waiting jobs in the key range (after, through], joined to their
        tenant's plan base + depth bonus: writes only rows still pending and unclaimed whose
        value changes, and returns their ids."""
        table = Command._meta.db_table
        priority = f"parts.part + {wait_sql} * %s"
        priority_params = [*wait_params, params.age_bonus_per_minute]
        parts_sql, parts_params = _parts_relation(tenant_part)
        where: list[str] = []
        where_params: list[Any] = []
        for bound, comparison in ((after, ">"), (through, "<=")):
            if bound is not None:
                # As the ORM stores it (SQLite compares text: naive UTC, not isoformat).
                queued_at = connection.ops.adapt_datetimefield_value(bound[0])
                where.append(
                    f"({table}.queued_at, {table}.id) {comparison} (%s, %s) "
                    f"AND {table}.queued_at {comparison[0]}= %s"
                )
                where_params += [queued_at, bound[1], queued_at]
        sql = (
            f"WITH parts (tenant_id, part) AS ({parts_sql}) "
            f"UPDATE {table} SET queue_priority = {priority}, version = {table}.version + 1 "
            f"FROM parts WHERE {table}.tenant_id = parts.tenant_id "
            f"AND {table}.status = %s AND {table}.is_platform_job = %s AND {table}.agent_id IS NULL "
            f"{''.join(f'AND {bound} ' for bound in where)}"
            f"AND {table}.queue_priority <> {priority} "
            f"RETURNING {table}.id"
        )
        with connection.cursor() as cursor:
            cursor.execute(
                sql,
                [
                    *parts_params,
                    *priority_params,
                    CommandStatus.PENDING,
                    True,
                    *where_params,
                    *priority_params,
                ],
            )
            return [row[0] for row in cursor.fetchall()]

    def _tenant_parts(self, params: QueuePriorityParams) -> dict[int, int]:
        """Per tenant, the plan base plus depth bonus: one GROUP BY per run, not per row."""
        depths = (
            waiting_platform_jobs()
            .order_by()
            .values_list("tenant_id", "tenant__plan")
            .annotate(depth=Count("id"))
        )
        plan_base: dict[str, int] = {str(plan): base for plan, base in params.plan_base.items()}
        return {
            tenant_id: plan_base[plan] + max(0, params.depth_bonus_max - depth)
            for tenant_id, plan, depth in depths
        }


def _parts_relation(tenant_part: dict[int, int]) -> tuple[str, list[Any]]:
    """The (tenant_id, part) snapshot as a relation, in a fixed number of parameters (a
    VALUES list would make every statement carry two per tenant)."""
    if connection.vendor == "postgresql":
        return "SELECT * FROM unnest(%s::bigint[], %s::integer[])", [
            list(tenant_part),
            list(tenant_part.values()),
        ]
    return "SELECT CAST(key AS INTEGER), value FROM json_each(%s)", [json.dumps(tenant_part)]
