"""Writes on agents and leases. Every write is a conditional UPDATE that bumps `version`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from controlplane.agents.models import Agent, AgentHealth, AgentLease, AgentStatus
from controlplane.audit.services import audit_record
from controlplane.commands.models import ACTIVE_STATUSES, Command, StatusReason
from controlplane.commands.transitions import requeue_values
from controlplane.common.db import db_now
from controlplane.common.errors import ConcurrentModificationError, InvalidTransition
from controlplane.common.secrets import issue_secret
from controlplane.tenants.models import Tenant


class AgentNotActiveError(Exception):
    """The agent does not exist or is not active (disabled/revoked agents get no heartbeat)."""


@dataclass(frozen=True)
class HeartbeatResult:
    last_seen_at: datetime
    version: int
    lease_expires_at: datetime | None


def agent_heartbeat(agent_id: int, *, holder_identity: str = "") -> HeartbeatResult:
    """Record a heartbeat: last_seen_at = database now, health online, version + 1.

    One conditional UPDATE (`WHERE id = ? AND status = 'active'`), so concurrent
    heartbeats and controller sweeps serialise on the row and none is lost. For a
    platform agent the lease is renewed (or created) in the same transaction.
    Raises AgentNotActiveError if the agent is unknown or not active.
    """
    with transaction.atomic():
        updated = Agent.objects.filter(pk=agent_id, status=AgentStatus.ACTIVE).update(
            last_seen_at=Now(), health=AgentHealth.ONLINE, version=F("version") + 1, updated_at=Now()
        )
        if not updated:
            raise AgentNotActiveError(agent_id)
        agent = Agent.objects.only("last_seen_at", "version", "is_platform_agent").get(pk=agent_id)
        assert agent.last_seen_at is not None
        lease_expires_at = None
        if agent.is_platform_agent:
            lease_expires_at = _lease_renew(agent, holder_identity or f"agent-{agent_id}")
    return HeartbeatResult(
        last_seen_at=agent.last_seen_at, version=agent.version, lease_expires_at=lease_expires_at
    )


def _lease_renew(agent: Agent, holder_identity: str) -> datetime:
    renewed_at = agent.last_seen_at
    assert renewed_at is not None
    renewed = AgentLease.objects.filter(agent_id=agent.pk).update(
        renew_time=renewed_at, holder_identity=holder_identity[:200], version=F("version") + 1
    )
    if not renewed:
        AgentLease.objects.create(
            agent_id=agent.pk, renew_time=renewed_at, holder_identity=holder_identity[:200]
        )
    duration = (
        AgentLease.objects.filter(agent_id=agent.pk).values_list("lease_duration_seconds", flat=True).get()
    )
    return renewed_at + timedelta(seconds=duration)


@dataclass(frozen=True)
class CreatedAgent:
    agent: Agent
    api_key: str  # shown once, never stored


def agent_create(
    *,
    name: str,
    tenant: Tenant | None,
    capabilities: list[str] | None = None,
    max_concurrent_jobs: int = 1,
    actor: str,
    details: dict[str, Any] | None = None,
) -> CreatedAgent:
    """Create an agent with a fresh API key (stored hashed). Platform agent iff tenant is None."""
    secret = issue_secret("cpa")
    with transaction.atomic():
        agent = Agent.objects.create(
            name=name,
            tenant=tenant,
            is_platform_agent=tenant is None,
            capabilities=list(capabilities or []),
            max_concurrent_jobs=max_concurrent_jobs,
            api_key_hash=secret.hash,
            api_key_prefix=secret.prefix,
        )
        audit_record(
            actor=actor,
            action="agent.created",
            resource_type="agent",
            resource_id=agent.pk,
            details={"name": name, "tenant": tenant.pk if tenant else None, **(details or {})},
        )
    return CreatedAgent(agent=agent, api_key=secret.raw)


# --- Operator actions -------------------------------------------------------------------
# Each locks the agent row, checks its state and the version the operator saw, then writes
# with the same conditions in the WHERE clause (so a concurrent heartbeat or sweep is never
# overwritten, even where row locks are a no-op as on SQLite), bumps `version` and records
# an AuditLog row in the same transaction.

# status is admin-controlled; revoked is final (a revoked key must never work again).
AGENT_STATUS_TRANSITIONS: dict[str, frozenset[str]] = {
    AgentStatus.ACTIVE: frozenset({AgentStatus.DISABLED, AgentStatus.REVOKED}),
    AgentStatus.DISABLED: frozenset({AgentStatus.ACTIVE, AgentStatus.REVOKED}),
    AgentStatus.REVOKED: frozenset(),
}
# What an operator may edit in the change form; the rest belongs to heartbeats and controllers.
AGENT_OPERATOR_FIELDS = frozenset({"name", "status", "capabilities", "max_concurrent_jobs"})


def _agent_locked_state(agent_id: int) -> Mapping[str, Any]:
    row = (
        Agent.objects.select_for_update()
        .filter(pk=agent_id)
        .values("name", "status", "health", "version", "capabilities", "max_concurrent_jobs")
        .first()
    )
    if row is None:
        raise Agent.DoesNotExist(f"agent #{agent_id} does not exist")
    return row


def _agent_version_check(agent_id: int, row: Mapping[str, Any], expected_version: int | None) -> None:
    if expected_version is not None and row["version"] != expected_version:
        raise ConcurrentModificationError(
            f"agent {row['name']!r} changed concurrently, reload: version {expected_version} was loaded, "
            f"the database has {row['version']} (a heartbeat, a controller or another operator wrote it); "
            "nothing was changed"
        )


def _agent_status_check(row: Mapping[str, Any], target: str) -> None:
    if target not in AGENT_STATUS_TRANSITIONS[row["status"]]:
        final = " (revoked is final)" if row["status"] == AgentStatus.REVOKED else ""
        raise InvalidTransition(f"cannot set agent {row['name']!r} from {row['status']} to {target}{final}")


def _agent_lost_race(agent_id: int) -> ConcurrentModificationError:
    return ConcurrentModificationError(
        f"agent #{agent_id} changed concurrently, reload: it was written while this action ran; "
        "nothing was changed"
    )


def _agent_jobs_requeue(agent_id: int, *, at: datetime, actor: str) -> list[int]:
    """Requeue every acknowledged/running job the agent holds (reason holder_revoked), set-based.

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
        Command.objects.filter(pk__in=held, agent_id=agent_id, status__in=ACTIVE_STATUSES).update(
            **requeue_values(
                at=at, reason=StatusReason.HOLDER_REVOKED, message=f"holder agent revoked by {actor}"
            )
        )
    return held


def _agent_status_write(
    agent_id: int, *, target: str, expected_version: int | None, actor: str, action: str
) -> bool:
    with transaction.atomic():
        row = _agent_locked_state(agent_id)
        if row["status"] == target:
            return False
        _agent_status_check(row, target)
        _agent_version_check(agent_id, row, expected_version)
        at = db_now()
        changed = Agent.objects.filter(pk=agent_id, status=row["status"], version=row["version"]).update(
            status=target, version=F("version") + 1, updated_at=at
        )
        if not changed:
            raise _agent_lost_race(agent_id)
        details: dict[str, Any] = {"from_status": row["status"], "to_status": target}
        if target == AgentStatus.REVOKED:
            details["requeued_commands"] = _agent_jobs_requeue(agent_id, at=at, actor=actor)
        audit_record(
            actor=actor, action=action, resource_type="agent", resource_id=agent_id, details=details, at=at
        )
    return True


def agent_revoke(agent_id: int, *, expected_version: int | None, actor: str) -> bool:
    """Revoke an agent (final: its key never authenticates again) and requeue its
    acknowledged/running jobs with reason holder_revoked, in one transaction.

    Returns False if it is already revoked; raises ConcurrentModificationError if
    `expected_version` is given and is not the row's version.
    """
    return _agent_status_write(
        agent_id,
        target=AgentStatus.REVOKED,
        expected_version=expected_version,
        actor=actor,
        action="agent.revoked",
    )


def agent_set_status(agent_id: int, status: str, *, expected_version: int | None, actor: str) -> bool:
    """Disable (active → disabled) or enable (disabled → active) an agent.

    Returns False if it already has that status; raises InvalidTransition for a revoked
    agent (revoked is final) and ConcurrentModificationError on a version mismatch.
    `status="revoked"` is agent_revoke (the held jobs are requeued).
    """
    if status == AgentStatus.REVOKED:
        return agent_revoke(agent_id, expected_version=expected_version, actor=actor)
    if status not in (AgentStatus.ACTIVE, AgentStatus.DISABLED):
        raise ValueError(f"unknown agent status {status!r}")
    action = "agent.enabled" if status == AgentStatus.ACTIVE else "agent.disabled"
    return _agent_status_write(
        agent_id, target=status, expected_version=expected_version, actor=actor, action=action
    )


def agent_force_offline(agent_id: int, *, expected_version: int | None, actor: str) -> bool:
    """Mark an agent offline now (last_offline_at = database clock), as agent-health would.

    Returns False if it is already offline. Its held jobs are left to job-recovery
    (reason holder_offline), exactly as for an agent that went quiet. A platform agent
    that is still alive turns online again at its next heartbeat.
    """
    with transaction.atomic():
        row = _agent_locked_state(agent_id)
        if row["health"] == AgentHealth.OFFLINE:
            return False
        _agent_version_check(agent_id, row, expected_version)
        at = db_now()
        changed = (
            Agent.objects.filter(pk=agent_id, version=row["version"])
            .exclude(health=AgentHealth.OFFLINE)
            .update(health=AgentHealth.OFFLINE, last_offline_at=at, version=F("version") + 1, updated_at=at)
        )
        if not changed:
            raise _agent_lost_race(agent_id)
        audit_record(
            actor=actor,
            action="agent.forced_offline",
            resource_type="agent",
            resource_id=agent_id,
            details={"from_health": row["health"]},
            at=at,
        )
    return True


def agent_update(agent_id: int, *, changes: Mapping[str, Any], expected_version: int, actor: str) -> bool:
    """An operator's edit from the change form: one conditional UPDATE of exactly the changed
    editable fields (WHERE version = expected_version), so a heartbeat that landed after the
    form was loaded is never overwritten: the edit is refused instead.

    A status change follows the same rules as the actions (revoked is final; revoking
    requeues the held jobs). Returns False if `changes` is empty. Raises ValueError for a
    field operators may not edit, InvalidTransition, ConcurrentModificationError.
    """
    unknown = set(changes) - AGENT_OPERATOR_FIELDS
    if unknown:
        raise ValueError(f"not editable by operators: {', '.join(sorted(unknown))}")
    if not changes:
        return False
    with transaction.atomic():
        row = _agent_locked_state(agent_id)
        _agent_version_check(agent_id, row, expected_version)
        # A form may resubmit values it did not change; writing them would bump version for nothing.
        changes = {field: value for field, value in changes.items() if row[field] != value}
        if not changes:
            return False
        target = changes.get("status", row["status"])
        if target != row["status"]:
            _agent_status_check(row, target)
        at = db_now()
        changed = Agent.objects.filter(pk=agent_id, version=expected_version, status=row["status"]).update(
            **changes, version=F("version") + 1, updated_at=at
        )
        if not changed:
            raise _agent_lost_race(agent_id)
        details: dict[str, Any] = {
            "before": {field: row[field] for field in changes},
            "after": dict(changes),
        }
        if target == AgentStatus.REVOKED and row["status"] != AgentStatus.REVOKED:
            details["requeued_commands"] = _agent_jobs_requeue(agent_id, at=at, actor=actor)
        audit_record(
            actor=actor,
            action="agent.updated",
            resource_type="agent",
            resource_id=agent_id,
            details=details,
            at=at,
        )
    return True


def agent_lease_update(
    lease_id: int, *, changes: Mapping[str, Any], expected_version: int, actor: str
) -> bool:
    """An operator's edit of a lease's duration, conditional on the version the form loaded
    (every renewal bumps it), so a save never rewinds a concurrent renewal."""
    unknown = set(changes) - {"lease_duration_seconds"}
    if unknown:
        raise ValueError(f"not editable by operators: {', '.join(sorted(unknown))}")
    if not changes:
        return False
    with transaction.atomic():
        changed = AgentLease.objects.filter(pk=lease_id, version=expected_version).update(
            **changes, version=F("version") + 1
        )
        if not changed:
            current = AgentLease.objects.filter(pk=lease_id).values_list("version", flat=True).first()
            raise ConcurrentModificationError(
                f"lease #{lease_id} changed concurrently, reload: version {expected_version} was loaded, "
                f"the database has {current}; nothing was changed"
            )
        audit_record(
            actor=actor,
            action="agent.lease.updated",
            resource_type="agent_lease",
            resource_id=lease_id,
            details={"after": dict(changes)},
        )
    return True
