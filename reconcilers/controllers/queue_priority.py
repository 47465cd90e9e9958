"""queue-priority: keeps every waiting platform job's `queue_priority` equal to the formula.

Converges `queue_priority` of pending, unclaimed platform jobs to
`plan_base[plan] + wait_minutes * age_bonus_per_minute + max(0, depth_bonus_max - depth)`
(see `controlplane.commands.priority`, the Python reference). The age term is what makes
the queue fair: a free-plan job overtakes newer enterprise work after at most
(largest plan gap + depth_bonus_max) / age_bonus_per_minute minutes. Leaves alone tenant
commands (dispatched oldest first per agent), claimed jobs and rows whose value is
already right (no write, no version bump, so claimers see no churn).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from django.db import connection
from django.db.models import Count, QuerySet
from pydantic import Field, field_validator

from controlplane.commands.models import Command, CommandStatus
from controlplane.tenants.models import Plan
from reconcilers.queries.batches import keyset_rows
from reconcilers.queries.expressions import expression_sql, wait_minutes_expression
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

BATCH_SIZE = 5000  # jobs per UPDATE: one short transaction each; claimers skip locked rows, never wait
PlanName = Literal["free", "team", "business", "enterprise"]
PLAN_BASE_DEFAULT: dict[PlanName, int] = {"enterprise": 100, "business": 75, "team": 50, "free": 25}
PLAN_BASE_MAX = 10_000
PlanBase = Annotated[int, Field(ge=0, le=PLAN_BASE_MAX)]


class QueuePriorityParams(ControllerParams):
    plan_base: dict[PlanName, PlanBase] = Field(
        default_factory=lambda: dict(PLAN_BASE_DEFAULT),
        description="Base priority per tenant plan (all four plans, each 0..10000).",
    )
    age_bonus_per_minute: int = Field(
        2, ge=1, le=1000, description="Priority gained per whole minute waited."
    )
    depth_bonus_max: int = Field(
        10, ge=0, le=1000, description="Bonus for tenants with few waiting jobs: max(0, this - depth)."
    )

    @field_validator("plan_base")
    @classmethod
    def _every_plan(cls, value: dict[PlanName, int]) -> dict[PlanName, int]:
        missing = sorted(set(Plan.values) - set(value))
        if missing:
            raise ValueError(f"every plan needs a base priority; missing: {', '.join(missing)}")
        return value


def fairness_bound_minutes(params: QueuePriorityParams) -> float:
    """Longest a job waits behind newer work while claims keep up with arrivals."""
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
        tenant_part = self._tenant_parts(params)
        wait_sql, wait_params = expression_sql(Command, wait_minutes_expression(ctx.now))
        changed_total = 0
        changed_ids: list[int] = []
        for rows in keyset_rows(waiting_platform_jobs(), "queued_at", BATCH_SIZE, fields=("tenant_id",)):
            # Tenants first seen after the depth snapshot wait for the next run (their jobs
            # got the formula at enqueue); this keeps depth computed once per run.
            ids = [pk for pk, tenant_id in rows if tenant_id in tenant_part]
            if not ids:
                ctx.checkpoint()
                continue
            batch_parts = sorted({(t, tenant_part[t]) for _, t in rows if t in tenant_part})
            with ctx.transaction():
                batch_changed = self._reprioritize(ids, batch_parts, wait_sql, wait_params, params)
            changed_total += len(batch_changed)
            changed_ids.extend(batch_changed)
        ctx.log_step("reprioritized", changed_total, changed_ids)
        return self.result(reprioritized=changed_total)

    @staticmethod
    def _reprioritize(
        ids: list[int],
        parts: list[tuple[int, int]],
        wait_sql: str,
        wait_params: list[Any],
        params: QueuePriorityParams,
    ) -> list[int]:
        """One UPDATE for a batch, joined to its tenants' (plan base + depth bonus): writes only
        rows still pending and unclaimed whose value changes, and returns their ids."""
        table = Command._meta.db_table
        priority = f"parts.part + {wait_sql} * %s"
        priority_params = [*wait_params, params.age_bonus_per_minute]
        sql = (
            f"WITH parts (tenant_id, part) AS (VALUES {', '.join(['(%s, %s)'] * len(parts))}) "
            f"UPDATE {table} SET queue_priority = {priority}, version = {table}.version + 1 "
            f"FROM parts WHERE {table}.tenant_id = parts.tenant_id "
            f"AND {table}.id IN ({', '.join(['%s'] * len(ids))}) "
            f"AND {table}.status = %s AND {table}.is_platform_job = %s AND {table}.agent_id IS NULL "
            f"AND {table}.queue_priority <> {priority} "
            f"RETURNING {table}.id"
        )
        values = [value for pair in parts for value in pair]
        with connection.cursor() as cursor:
            cursor.execute(
                sql,
                [*values, *priority_params, *ids, CommandStatus.PENDING, True, *priority_params],
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

    def config_warnings(self, params: ControllerParams) -> list[str]:
        assert isinstance(params, QueuePriorityParams)
        return fairness_warnings(params, _max_queue_minutes())


def fairness_warnings(params: QueuePriorityParams, max_queue_minutes: int) -> list[str]:
    bound = fairness_bound_minutes(params)
    if bound < max_queue_minutes:
        return []
    return [
        f"queue-priority fairness bound is {bound:g} minutes ((largest plan gap + depth_bonus_max) / "
        f"age_bonus_per_minute), not below job-recovery's max_queue_minutes ({max_queue_minutes}): "
        "a low-plan job can expire in the queue behind newer higher-plan work"
    ]


def _max_queue_minutes() -> int:
    from reconcilers.registry import UnknownControllerError, params_load

    try:
        params: Any = params_load("job-recovery")
    except UnknownControllerError:
        return 60  # job-recovery's default, until it is registered
    return int(params.max_queue_minutes)
