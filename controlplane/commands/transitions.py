"""Column values of the command lifecycle transitions, shared by controllers, services and admin.

Each function returns keyword arguments for a set-based `QuerySet.update(...)`; the caller
puts the state condition in the WHERE clause. Every transition bumps `version`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Case, F, Field, IntegerField, Q, Value, When
from django.db.models.expressions import RawSQL

from controlplane.commands.models import Command, CommandStatus
from controlplane.commands.priority import QueuePriorityPolicy, priority_policy
from controlplane.tenants.models import Tenant


def requeue_values(*, at: datetime, reason: str, message: str) -> dict[str, Any]:
    """Back to pending: holder and progress cleared, target_agent kept, queued_at = `at`, and
    a platform job's queue_priority recomputed in the same statement (requeue_priority): a
    job that waited 40 minutes before its claim does not keep an aged priority."""
    return {
        "status": CommandStatus.PENDING,
        "agent": None,
        "acknowledged_at": None,
        "started_at": None,
        "last_progress_at": None,
        "queued_at": at,
        "queue_priority": requeue_priority(priority_policy()),
        "status_reason": reason,
        "error_message": message,
        "version": F("version") + 1,
    }


def terminal_values(*, status: str, at: datetime, reason: str, message: str = "") -> dict[str, Any]:
    """Into a terminal state (failed, canceled, expired): completed_at = `at`."""
    return {
        "status": status,
        "completed_at": at,
        "status_reason": reason,
        "error_message": message,
        "version": F("version") + 1,
    }


def values_when(condition: Q, then: dict[str, Any], otherwise: dict[str, Any]) -> dict[str, Any]:
    """Two transitions as one UPDATE: `then` on the rows matching `condition`, `otherwise` on
    the rest. A column that only one side sets keeps its value on rows of the other side.

    job-recovery takes a job back with it: requeued while attempts are left, failed once
    they are not, in one pass over the trigger instead of two.
    """
    merged: dict[str, Any] = {}
    for name in dict.fromkeys([*then, *otherwise]):
        field = Command._meta.get_field(name)
        assert isinstance(field, Field)
        when_true, when_false = then.get(name, F(name)), otherwise.get(name, F(name))
        if _expression(when_true, field) == _expression(when_false, field):
            merged[name] = when_true
            continue
        merged[name] = Case(
            When(condition, then=_expression(when_true, field)),
            default=_expression(when_false, field),
            output_field=field,
        )
    return merged


def _expression(value: Any, field: Field[Any, Any]) -> Any:
    return value if hasattr(value, "resolve_expression") else Value(value, output_field=field)


def requeue_priority(policy: QueuePriorityPolicy) -> RawSQL:
    """queue_priority of a job re-entering the queue now (design.md §5.2): for a platform job
    the formula at wait 0, with its tenant's waiting platform jobs counted when the statement
    runs plus itself; a tenant command keeps its value (they are dispatched oldest first).

    Per row, one tenant lookup and a count that stops at depth_bonus_max (beyond it the
    depth bonus is 0 anyway), through the tenant's waiting-jobs index: the cost of a batch
    does not grow with the queue. Jobs of one tenant requeued by one statement do not count
    each other; queue-priority's next run converges them.
    """
    commands, tenants = Command._meta.db_table, Tenant._meta.db_table
    plans = list(policy.plan_base.items())
    by_plan = " ".join("WHEN %s THEN %s" for _ in plans)
    sql = (
        f"CASE WHEN {commands}.is_platform_job = %s THEN "
        f"(SELECT CASE t.plan {by_plan} ELSE 0 END FROM {tenants} t WHERE t.id = {commands}.tenant_id) + "
        "(SELECT CASE WHEN %s - 1 - count(*) > 0 THEN %s - 1 - count(*) ELSE 0 END FROM ("
        f"SELECT 1 FROM {commands} w WHERE w.tenant_id = {commands}.tenant_id AND w.status = %s "
        "AND w.is_platform_job = %s AND w.agent_id IS NULL LIMIT %s) capped) "
        f"ELSE {commands}.queue_priority END"
    )
    params: list[Any] = [True]
    for plan, base in plans:
        params += [plan, base]
    cap = policy.depth_bonus_max
    params += [cap, cap, CommandStatus.PENDING, True, cap]
    return RawSQL(sql, params, output_field=IntegerField())
