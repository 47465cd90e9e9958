"""The dispatch priority of a pending platform job: one formula, used at enqueue and by queue-priority.

    queue_priority = plan_base[plan] + wait_minutes * age_bonus_per_minute
                     + max(0, depth_bonus_max - tenant_pending_jobs)

wait_minutes is whole minutes since queued_at (floored, never negative) and
tenant_pending_jobs counts the tenant's pending unclaimed platform jobs, this one included.
Dispatch order is `queue_priority DESC, queued_at ASC, id ASC` (design.md §5.3).

The numbers of the formula are a policy. Its defaults live here; whoever tunes them (the
reconciler app, from queue-priority's config) installs a policy source at start, so the
domain never imports the controller that keeps the column converged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

DISPATCH_ORDER = ("-queue_priority", "queued_at", "id")
PLAN_BASE_DEFAULT: Mapping[str, int] = MappingProxyType(
    {"enterprise": 100, "business": 75, "team": 50, "free": 25}
)
AGE_BONUS_PER_MINUTE_DEFAULT = 2
DEPTH_BONUS_MAX_DEFAULT = 10


@dataclass(frozen=True)
class QueuePriorityPolicy:
    """The tunable numbers of the formula."""

    plan_base: Mapping[str, int] = field(default_factory=lambda: dict(PLAN_BASE_DEFAULT))
    age_bonus_per_minute: int = AGE_BONUS_PER_MINUTE_DEFAULT
    depth_bonus_max: int = DEPTH_BONUS_MAX_DEFAULT

    def priority(self, *, plan: str, wait_minutes: int, tenant_pending_jobs: int) -> int:
        return queue_priority(
            plan=plan,
            plan_base=self.plan_base,
            wait_minutes=wait_minutes,
            age_bonus_per_minute=self.age_bonus_per_minute,
            depth_bonus_max=self.depth_bonus_max,
            tenant_pending_jobs=tenant_pending_jobs,
        )


PolicySource = Callable[[], QueuePriorityPolicy]
_policy_source: PolicySource | None = None


def priority_policy_install(source: PolicySource | None) -> None:
    """Make `source` the policy's provider (None: back to the defaults)."""
    global _policy_source
    _policy_source = source


def priority_policy() -> QueuePriorityPolicy:
    """The policy in effect: the installed source's, or the defaults."""
    return _policy_source() if _policy_source is not None else QueuePriorityPolicy()


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
