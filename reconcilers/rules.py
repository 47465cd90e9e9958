"""Constraints that span two controllers: refused when a save would break them, flagged on
rows that already do (design.md §5.3). Neither controller may know the other, so the rule
lives here, above both, for the services (refusal) and the selectors (flags)."""

from __future__ import annotations

from collections.abc import Mapping

from reconcilers.controllers.job_recovery import JobRecoveryParams
from reconcilers.controllers.queue_priority import QueuePriorityParams, fairness_bound_minutes
from reconcilers.runtime.contract import ControllerParams

JOB_RECOVERY, QUEUE_PRIORITY = "job-recovery", "queue-priority"
# The params of each side that move the inequality, named in a refusal.
FAIRNESS_FIELDS = {
    QUEUE_PRIORITY: ("age_bonus_per_minute", "depth_bonus_max", "plan_base"),
    JOB_RECOVERY: ("max_queue_minutes",),
}


def fairness_conflict(params: Mapping[str, ControllerParams | None]) -> str | None:
    """queue-priority's fairness bound must stay below job-recovery's max_queue_minutes, or a
    low-plan job can expire in the queue behind newer higher-plan work. `params` holds each
    side's params in effect (None: invalid, reported on its own)."""
    priority, recovery = params.get(QUEUE_PRIORITY), params.get(JOB_RECOVERY)
    if not isinstance(priority, QueuePriorityParams) or not isinstance(recovery, JobRecoveryParams):
        return None
    bound = fairness_bound_minutes(priority)
    if bound < recovery.max_queue_minutes:
        return None
    return (
        f"queue-priority fairness bound is {bound:g} minutes ((largest plan gap + depth_bonus_max) / "
        f"age_bonus_per_minute), not below job-recovery's max_queue_minutes ({recovery.max_queue_minutes}): "
        "a low-plan job can expire in the queue behind newer higher-plan work"
    )
