"""The naive baseline: the per-row ORM loop most periodic Celery tasks are written as.

Each function processes at most `sample` rows the way such a task would (select the
candidates, then one save or delete per row, often with a query per row to decide),
and returns the number of rows it changed; the harness extrapolates its time per row
to the controller's row count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from bench.generate import BENCH_PARAMS
from controlplane.agents.models import Agent
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command
from controlplane.tokens.models import BootstrapToken


def agent_health(now: datetime, sample: int) -> int:
    stale = timedelta(seconds=BENCH_PARAMS["agent-health"]["stale_timeout_seconds"])
    changed = 0
    for agent in Agent.objects.filter(health="online", last_seen_at__lt=now - stale)[:sample]:
        agent.health = "offline"
        agent.last_offline_at = now
        agent.version += 1
        agent.save()
        changed += 1
    return changed


def job_recovery(now: datetime, sample: int) -> int:
    changed = 0
    for command in Command.objects.filter(status__in=["acknowledged", "running"])[: sample * 4]:
        progress = max(
            t for t in (command.last_progress_at, command.started_at, command.acknowledged_at) if t
        )
        holder = Agent.objects.get(pk=command.agent_id) if command.agent_id else None
        stuck = progress < now - timedelta(minutes=30)
        offline = holder is not None and (holder.health != "online" or holder.status != "active")
        if not (stuck or offline):
            continue
        if command.dispatch_attempts >= 3:
            command.status = "failed"
            command.completed_at = now
        else:
            command.status = "pending"
            command.agent = None
            command.queued_at = now
        command.version += 1
        command.save()
        changed += 1
        if changed >= sample:
            break
    return changed


def queue_priority(now: datetime, sample: int) -> int:
    plan_base = {"enterprise": 100, "business": 75, "team": 50, "free": 25}
    changed = 0
    pending = Command.objects.filter(status="pending", is_platform_job=True, agent__isnull=True)
    for command in pending.select_related("tenant")[:sample]:
        depth = pending.filter(tenant_id=command.tenant_id).count()
        wait = max(0, int((now - command.queued_at).total_seconds() // 60))
        priority = plan_base[command.tenant.plan] + wait * 2 + max(0, 10 - depth)
        if priority != command.queue_priority:
            command.queue_priority = priority
            command.version += 1
            command.save()
            changed += 1
    return changed


def token_cleanup(now: datetime, sample: int) -> int:
    changed = 0
    for token in BootstrapToken.objects.filter(status="active", expires_at__lt=now)[:sample]:
        token.status = "expired"
        token.status_changed_at = now
        token.save()
        changed += 1
    return changed


def audit_retention(now: datetime, sample: int) -> int:
    changed = 0
    for row in AuditLog.objects.filter(created_at__lt=now - timedelta(days=365)).order_by("id")[:sample]:
        changed += AuditLog.objects.retention_delete_id_range(row.pk, row.pk)
    return changed


NAIVE: dict[str, Callable[[datetime, int], int]] = {
    "agent-health": agent_health,
    "job-recovery": job_recovery,
    "queue-priority": queue_priority,
    "token-cleanup": token_cleanup,
    "audit-retention": audit_retention,
}
