"""The dispatch priority of a pending platform job: one formula, used at enqueue and by queue-priority.

    queue_priority = plan_base[plan] + wait_minutes * age_bonus_per_minute
                     + max(0, depth_bonus_max - tenant_pending_jobs)

wait_minutes is whole minutes since queued_at (floored, never negative) and
tenant_pending_jobs counts the tenant's pending unclaimed platform jobs, this one included.
Dispatch order is `queue_priority DESC, queued_at ASC, id ASC`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

DISPATCH_ORDER = ("-queue_priority", "queued_at", "id")


def wait_minutes(queued_at: datetime, now: datetime) -> int:
    return max(0, int((now - queued_at).total_seconds() // 60))


def queue_priority(
    *,
    plan: str,
    plan_base: Mapping[str, int],
    wait_minutes: int,
    age_bonus_per_minute: int,
    depth_bonus_max: int,
    tenant_pending_jobs: int,
) -> int:
    return (
        plan_base[plan]
        + max(0, wait_minutes) * age_bonus_per_minute
        + max(0, depth_bonus_max - tenant_pending_jobs)
    )
