"""Writes on commands from producers and agents: enqueue, claim, and the holder's reports.

Every write is one conditional UPDATE whose WHERE clause re-checks the state it depends
on and bumps `version`, so a report from a slow former holder, a controller sweep and a
new claim can interleave in any order without one overwriting another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Coalesce, Now

from controlplane.agents.models import Agent, AgentHealth, AgentStatus
from controlplane.agents.services import AgentNotActiveError
from controlplane.commands.models import ACTIVE_STATUSES, Command, CommandStatus, StatusReason
from controlplane.commands.priority import priority_policy
from controlplane.commands.retries import retry_limit
from controlplane.commands.transitions import requeue_values, terminal_values, values_when
from controlplane.common.db import db_now, is_postgresql
from controlplane.common.logsafe import log_safe
from controlplane.tenants.models import Tenant

log = logging.getLogger(__name__)

MAX_KIND_LENGTH = 100  # Command.kind max_length
MAX_ENQUEUE_BATCH = 10_000  # one producer call; bigger batches belong in a loop of batches
MAX_ERROR_MESSAGE_LENGTH = 4000


class EnqueueError(ValueError):
    """The enqueue request is invalid; nothing was saved."""


class CommandNotFoundError(Exception):
    """No such command, or not one this agent could ever hold (another tenant's, or the other kind)."""


class CommandConflictError(Exception):
    """The command is not held by this agent at this attempt, or not in a state the report applies to."""

    def __init__(self, command_id: int, status: str | None) -> None:
        # The status is told only to the agent holding the job (a stale attempt of its own);
        # another agent's job reads the same whatever its state, so ids cannot be probed.
        where = f" is {status} and" if status is not None else ""
        super().__init__(f"job {command_id}{where} not held by this agent at this attempt")
        self.status = status


# --- enqueue -----------------------------------------------------------------------------------


def queue_entry_priorities(tenant_id: int, plan: str, count: int) -> list[int]:
    """Priorities of `count` platform jobs of one tenant entering the queue now (wait 0): the
    i-th counts the tenant's waiting jobs, the ones before it and itself. Racing producers
    may each count the other's jobs or not; queue-priority recomputes the exact value on
    its next run."""
    policy = priority_policy()
    waiting = Command.objects.filter(
        tenant_id=tenant_id, is_platform_job=True, status=CommandStatus.PENDING, agent__isnull=True
    ).count()
    return [
        policy.priority(plan=plan, wait_minutes=0, tenant_pending_jobs=waiting + offset + 1)
        for offset in range(count)
    ]


def command_enqueue_many(
    tenant: Tenant,
    kind: str,
    payloads: Sequence[dict[str, Any]],
    *,
    is_platform_job: bool,
    target_agent: Agent | None = None,
    expires_at: datetime | None = None,
) -> list[Command]:
    """Enqueue several jobs of one tenant in one INSERT; same rules as `command_enqueue`."""
    if not kind or len(kind) > MAX_KIND_LENGTH:
        raise EnqueueError(f"kind must be 1..{MAX_KIND_LENGTH} characters")
    if not 1 <= len(payloads) <= MAX_ENQUEUE_BATCH:
        raise EnqueueError(f"between 1 and {MAX_ENQUEUE_BATCH} jobs per call")
    if any(not isinstance(payload, dict) for payload in payloads):
        raise EnqueueError("payload must be a JSON object")
    if target_agent is not None:
        if is_platform_job:
            raise EnqueueError("platform jobs are never pinned to an agent")
        if target_agent.tenant_id != tenant.pk:
            raise EnqueueError("target_agent must be one of the tenant's agents")
    with transaction.atomic():
        now = db_now()
        if expires_at is not None and expires_at <= now:
            raise EnqueueError("expires_at must be in the future")
        if is_platform_job:
            priorities = queue_entry_priorities(tenant.pk, tenant.plan, len(payloads))
        else:
            priorities = [0] * len(payloads)  # tenant commands are claimed oldest first
        commands = Command.objects.bulk_create(
            [
                Command(
                    tenant=tenant,
                    is_platform_job=is_platform_job,
                    kind=kind,
                    payload=payload,
                    target_agent=target_agent,
                    queue_priority=priority,
                    queued_at=now,
                    expires_at=expires_at,
                )
                for payload, priority in zip(payloads, priorities, strict=True)
            ]
        )
    log.debug(
        "enqueued %d %s job(s) of kind %s for tenant %s",
        len(commands),
        "platform" if is_platform_job else "tenant",
        log_safe(kind),
        tenant.pk,
    )
    return commands


def command_enqueue(
    tenant: Tenant,
    kind: str,
    payload: dict[str, Any],
    *,
    is_platform_job: bool,
    target_agent: Agent | None = None,
    expires_at: datetime | None = None,
) -> Command:
    """Enqueue one job: pending, queued_at = database now, queue_priority by the shared formula.

    Platform jobs get `plan_base + max(0, depth_bonus_max - tenant_pending_jobs)` (no wait
    yet) with the queue-priority controller's current params; tenant commands get 0 and
    are claimed oldest first. A tenant command may be pinned to one of its tenant's agents.
    Raises EnqueueError (nothing saved) for bad input.
    """
    return command_enqueue_many(
        tenant,
        kind,
        [payload],
        is_platform_job=is_platform_job,
        target_agent=target_agent,
        expires_at=expires_at,
    )[0]


# --- release by a revoked holder ----------------------------------------------------------


def commands_release_held(agent_id: int, *, at: datetime, actor: str, **signal: Any) -> list[int]:
    """Hand back every acknowledged/running command the agent holds, set-based, in the
    caller's transaction; returns their ids. The receiver of the agents app's
    `agent_revoked` signal. A command with claims left is requeued (reason holder_revoked,
    its priority recomputed); one that used its last claim is failed (retries_exhausted),
    exactly as job-recovery would (design.md §5.2), never given one more claim.

    target_agent is kept (it is never changed after creation): a tenant command pinned to
    the revoked agent can no longer be claimed, so job-recovery's queue timeout ends it.
    Lock order is agent row, then its commands, the same as command_claim, so no deadlock.
    """
    held = list(
        Command.objects.select_for_update()
        .filter(agent_id=agent_id, status__in=ACTIVE_STATUSES)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if held:
        max_retries = retry_limit()
        Command.objects.filter(pk__in=held, agent_id=agent_id, status__in=ACTIVE_STATUSES).update(
            **values_when(
                Q(dispatch_attempts__lt=max_retries),
                requeue_values(
                    at=at, reason=StatusReason.HOLDER_REVOKED, message=f"holder agent revoked by {actor}"
                ),
                terminal_values(
                    status=CommandStatus.FAILED,
                    at=at,
                    reason=StatusReason.RETRIES_EXHAUSTED,
                    message=f"exceeded maximum retry attempts ({max_retries}); holder revoked by {actor}",
                ),
            )
        )
    return held


# --- claim -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedCommand:
    command_id: int
    attempt: int
    kind: str
    payload: Any


# Written out rather than built by the ORM: claims are every agent's poll loop, and
# compiling the queryset cost more than running it.
_CLAIMING_AGENT = """
    SELECT a.tenant_id, a.is_platform_agent, a.health, a.max_concurrent_jobs
      FROM {agents} a
     WHERE a.id = %s AND a.status = %s
       {lock}
"""
_CLAIM_SET = """
    UPDATE {table}
       SET agent_id = %s, status = 'acknowledged', acknowledged_at = {now},
           dispatch_attempts = dispatch_attempts + 1, version = version + 1
     WHERE id = ({pick})
       AND status = 'pending' AND agent_id IS NULL
 RETURNING id, dispatch_attempts, kind, payload
"""
# The agent's room, counted in the claiming statement itself: a count read with the agent's
# lock would come from that statement's snapshot, taken before it waited for the lock, and
# miss a job that a concurrent claim of the same agent committed meanwhile. This later
# statement's snapshot includes it. Uncorrelated, so PostgreSQL tests it once, before
# scanning (and locking) any candidate; an agent at its limit gets no row.
_ROOM = """
    (SELECT count(*) FROM {table} held WHERE held.agent_id = %s AND held.status IN ({active})) < %s
"""
_PICK_PLATFORM = """
    SELECT id FROM {table}
     WHERE {room} AND status = 'pending' AND is_platform_job = %s AND agent_id IS NULL
       AND (expires_at IS NULL OR expires_at > {now})
     ORDER BY queue_priority DESC, queued_at ASC, id ASC
     LIMIT 1 {lock}
"""
_PICK_TENANT = """
    SELECT id FROM {table}
     WHERE {room} AND tenant_id = %s AND status = 'pending' AND is_platform_job = %s AND agent_id IS NULL
       AND (target_agent_id IS NULL OR target_agent_id = %s)
       AND (expires_at IS NULL OR expires_at > {now})
     ORDER BY queued_at ASC, id ASC
     LIMIT 1 {lock}
"""


def command_claim(agent_id: int) -> ClaimedCommand | None:
    """Give the agent its best next command, or None.

    Platform agents get pending unclaimed platform jobs in dispatch order
    (queue_priority DESC, queued_at ASC, id ASC); tenant agents get their tenant's
    pending commands pinned to them or unpinned, oldest first. Jobs past expires_at are
    skipped. None when the agent is not online (job-recovery would take the job straight
    back as holder_offline) or already holds max_concurrent_jobs. Raises AgentNotActiveError
    when the agent is unknown, disabled or revoked: this locked read is the claim's status
    check, which lets the API cache key checks (controlplane/api/auth.py).

    The claim sets the holder, status acknowledged, acknowledged_at (database clock),
    dispatch_attempts + 1 (returned as the attempt) and version + 1, in one UPDATE whose
    row is picked with FOR UPDATE SKIP LOCKED on PostgreSQL, so concurrent claimers never
    wait on or double-claim a row. On SQLite the single UPDATE ... WHERE id = (SELECT ...)
    is atomic by itself (the database has one writer), which is what serialises claims.

    On PostgreSQL a claim is four round trips: BEGIN, the locked agent row, the UPDATE ...
    RETURNING the job (which also counts the agent's held jobs, see _ROOM), COMMIT. Claims
    are the hot path of every agent's poll loop, so nothing else is read.
    """
    with transaction.atomic():
        # Locking the agent row serialises one agent's concurrent claims; the claiming
        # UPDATE counts its held jobs after the lock (_ROOM), so no race takes an agent
        # past max_concurrent_jobs.
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIMING_AGENT.format(
                    agents=Agent._meta.db_table, lock="FOR UPDATE OF a" if is_postgresql() else ""
                ),
                [agent_id, AgentStatus.ACTIVE],
            )
            found = cursor.fetchone()
        if found is None:
            raise AgentNotActiveError(agent_id)
        tenant_id, is_platform_agent, health, max_concurrent_jobs = found
        if health != AgentHealth.ONLINE:
            return None
        if is_postgresql():
            # statement_timestamp() is one instant for the whole UPDATE: the expiry test
            # and acknowledged_at agree, as with a clock read first, minus its round trip.
            now_sql, now_params, lock = "statement_timestamp()", [], "FOR UPDATE SKIP LOCKED"
        else:
            now_sql, now_params, lock = "%s", [connection.ops.adapt_datetimefield_value(db_now())], ""
        table = Command._meta.db_table
        room = _ROOM.format(table=table, active=", ".join(["%s"] * len(ACTIVE_STATUSES)))
        room_params = [agent_id, *ACTIVE_STATUSES, max_concurrent_jobs]
        if is_platform_agent:
            pick = _PICK_PLATFORM.format(table=table, lock=lock, now=now_sql, room=room)
            pick_params: list[Any] = [*room_params, True, *now_params]
        else:
            pick = _PICK_TENANT.format(table=table, lock=lock, now=now_sql, room=room)
            pick_params = [*room_params, tenant_id, False, agent_id, *now_params]
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIM_SET.format(table=table, pick=pick, now=now_sql), [agent_id, *now_params, *pick_params]
            )
            row = cursor.fetchone()
    if row is None:
        return None
    command_id, attempt, kind, payload = row
    log.debug("agent %s claimed command %s (attempt %s)", agent_id, command_id, attempt)
    payload_field = Command._meta.get_field("payload")
    return ClaimedCommand(
        command_id=command_id,
        attempt=attempt,
        kind=kind,
        payload=payload_field.from_db_value(payload, None, connection),  # type: ignore[arg-type]
    )


# --- reports from the holder -------------------------------------------------------------------


def _report(
    agent: Agent, command_id: int, attempt: int, from_statuses: Sequence[str], values: dict[str, Any]
) -> str:
    # The holder must still be active: a report re-checks its agent's status in the same
    # statement, which is what lets the API cache key checks (controlplane/api/auth.py).
    holder_active = Exists(Agent.objects.filter(pk=OuterRef("agent_id"), status=AgentStatus.ACTIVE))
    updated = (
        Command.objects.filter(
            pk=command_id, agent_id=agent.pk, dispatch_attempts=attempt, status__in=from_statuses
        )
        .filter(holder_active)
        .update(**values, version=F("version") + 1)
    )
    if updated:
        return str(values["status"])
    if not Agent.objects.filter(pk=agent.pk, status=AgentStatus.ACTIVE).exists():
        raise AgentNotActiveError(agent.pk)
    # Refused: tell "no such command (for you)" from "not yours at this attempt any more".
    visible = Command.objects.filter(pk=command_id, is_platform_job=agent.is_platform_agent)
    if agent.tenant_id is not None:
        visible = visible.filter(tenant_id=agent.tenant_id)
    found = visible.values_list("status", "agent_id").first()
    if found is None:
        raise CommandNotFoundError(command_id)
    status, holder_id = found
    raise CommandConflictError(command_id, status if holder_id == agent.pk else None)


def command_report_start(agent: Agent, command_id: int, attempt: int) -> str:
    """acknowledged -> running (started_at = database now). Returns the new status.

    Raises CommandNotFoundError, or CommandConflictError when the command is not held by `agent` at
    `attempt` or is not acknowledged; nothing changes then.
    """
    return _report(
        agent,
        command_id,
        attempt,
        [CommandStatus.ACKNOWLEDGED],
        {"status": CommandStatus.RUNNING, "started_at": Now()},
    )


def command_report_progress(agent: Agent, command_id: int, attempt: int, message: str = "") -> str:
    """Record progress (last_progress_at = database now) on an acknowledged or running job.

    Progress implies the work has started, so an acknowledged job becomes running with
    started_at set (an agent that skips `start` is not then requeued as not picked up).
    The message is logged, not stored: the Command row keeps no progress history.
    """
    status = _report(
        agent,
        command_id,
        attempt,
        list(ACTIVE_STATUSES),
        {
            "status": CommandStatus.RUNNING,
            "started_at": Coalesce(F("started_at"), Now()),
            "last_progress_at": Now(),
        },
    )
    if message:
        log.debug("command %s progress: %s", command_id, log_safe(message[:200]))
    return status


def command_report_complete(agent: Agent, command_id: int, attempt: int) -> str:
    """acknowledged/running -> completed (completed_at = database now); terminal."""
    return _report(
        agent,
        command_id,
        attempt,
        list(ACTIVE_STATUSES),
        {"status": CommandStatus.COMPLETED, "completed_at": Now()},
    )


def command_report_fail(agent: Agent, command_id: int, attempt: int, error: str) -> str:
    """acknowledged/running -> failed (completed_at = database now, error_message); terminal."""
    return _report(
        agent,
        command_id,
        attempt,
        list(ACTIVE_STATUSES),
        {
            "status": CommandStatus.FAILED,
            "completed_at": Now(),
            "error_message": error[:MAX_ERROR_MESSAGE_LENGTH],
        },
    )
