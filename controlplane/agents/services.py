"""Writes on agents and leases. Every write is a conditional UPDATE that bumps `version`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Q

from controlplane.agents.models import (
    LEASE_DURATION_DEFAULT_SECONDS,
    Agent,
    AgentHealth,
    AgentLease,
    AgentStatus,
)
from controlplane.agents.signals import agent_revoked
from controlplane.audit.services import audit_record
from controlplane.common.db import db_now, prepared_cursor
from controlplane.common.errors import InvalidTransition
from controlplane.common.secrets import issue_secret
from controlplane.common.versioned import lost_race, row_lock, version_check, versioned_edit, versioned_update
from controlplane.tenants.models import Tenant


class AgentNotActiveError(Exception):
    """The agent does not exist or is not active (disabled/revoked agents get no heartbeat)."""


@dataclass(frozen=True)
class HeartbeatResult:
    last_seen_at: datetime
    version: int
    lease_expires_at: datetime | None


# The heartbeat is every agent's most frequent request, so it is written out in SQL, one
# statement on PostgreSQL: the agent row's conditional UPDATE returns what the response needs,
# and a platform agent's lease is upserted from that row in the same statement (a
# data-modifying CTE). A single statement in autocommit is its own transaction: the agent row
# and the lease commit together or not at all, with no BEGIN/COMMIT round trips around it.
_HEARTBEAT_AGENT = """
    UPDATE {agents}
       SET last_seen_at = {now}, health = %s, version = version + 1, updated_at = {now}
     WHERE id = %s AND status = %s
 RETURNING id, last_seen_at, version, is_platform_agent
"""
_HEARTBEAT_LEASE = """
    INSERT INTO {leases} (agent_id, holder_identity, renew_time, lease_duration_seconds, version)
    {source}
        ON CONFLICT (agent_id) DO UPDATE
       SET renew_time = EXCLUDED.renew_time, holder_identity = EXCLUDED.holder_identity,
           version = {leases}.version + 1
 RETURNING renew_time, lease_duration_seconds
"""
_HEARTBEAT_PG = """
    WITH beat AS ({agent}),
         lease AS ({lease})
    SELECT beat.last_seen_at, beat.version, lease.renew_time, lease.lease_duration_seconds
      FROM beat LEFT JOIN lease ON true
"""


def agent_heartbeat(agent_id: int, *, holder_identity: str = "") -> HeartbeatResult:
    """Record a heartbeat: last_seen_at = database now, health online, version + 1.

    One conditional UPDATE (`WHERE id = ? AND status = 'active'`), so concurrent
    heartbeats and controller sweeps serialise on the row and none is lost, and a
    disabled or revoked agent is refused by the database itself, whatever a caller
    cached about it. For a platform agent the lease is renewed (or created) atomically
    with it: one statement on PostgreSQL, one transaction on SQLite.
    Raises AgentNotActiveError if the agent is unknown or not active.
    """
    agents, leases = Agent._meta.db_table, AgentLease._meta.db_table
    holder = (holder_identity or f"agent-{agent_id}")[:200]
    if connection.vendor == "postgresql":
        sql = _HEARTBEAT_PG.format(
            agent=_HEARTBEAT_AGENT.format(agents=agents, now="statement_timestamp()"),
            lease=_HEARTBEAT_LEASE.format(
                leases=leases,
                source="SELECT id, %s, last_seen_at, %s, 1 FROM beat WHERE is_platform_agent",
            ),
        )
        with prepared_cursor() as cursor:
            cursor.execute(
                sql,
                [AgentHealth.ONLINE, agent_id, AgentStatus.ACTIVE, holder, LEASE_DURATION_DEFAULT_SECONDS],
            )
            row = cursor.fetchone()
        if row is None:
            raise AgentNotActiveError(agent_id)
        last_seen_at, version, renewed_at, duration = row
    else:
        # SQLite has no data-modifying CTE: the same two statements in one transaction
        # (BEGIN IMMEDIATE takes the write lock up front, so nothing interleaves).
        with transaction.atomic(), connection.cursor() as cursor:
            last_seen_at = db_now()
            now = connection.ops.adapt_datetimefield_value(last_seen_at)
            cursor.execute(
                _HEARTBEAT_AGENT.format(agents=agents, now="%s"),
                [now, AgentHealth.ONLINE, now, agent_id, AgentStatus.ACTIVE],
            )
            found = cursor.fetchone()
            if found is None:
                raise AgentNotActiveError(agent_id)
            version, is_platform_agent = found[2], found[3]
            renewed_at, duration = None, 0
            if is_platform_agent:
                cursor.execute(
                    _HEARTBEAT_LEASE.format(leases=leases, source="VALUES (%s, %s, %s, %s, 1)"),
                    [agent_id, holder, now, LEASE_DURATION_DEFAULT_SECONDS],
                )
                renewed_at, duration = last_seen_at, cursor.fetchone()[1]
    lease_expires_at = None if renewed_at is None else renewed_at + timedelta(seconds=duration)
    return HeartbeatResult(last_seen_at=last_seen_at, version=version, lease_expires_at=lease_expires_at)


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
AGENT_LOCKED_FIELDS = ("name", "status", "health", "capabilities", "max_concurrent_jobs")


def _label(agent_id: int) -> str:
    return f"agent #{agent_id}"


_WRITERS = "a heartbeat, a controller or another operator"  # who else bumps an agent's version


def _agent_locked_state(agent_id: int) -> Mapping[str, Any]:
    return row_lock(Agent, agent_id, AGENT_LOCKED_FIELDS, label=_label(agent_id))


def _agent_status_check(row: Mapping[str, Any], target: str) -> None:
    if target not in AGENT_STATUS_TRANSITIONS[row["status"]]:
        final = " (revoked is final)" if row["status"] == AgentStatus.REVOKED else ""
        raise InvalidTransition(f"cannot set agent {row['name']!r} from {row['status']} to {target}{final}")


def _agent_held_work_release(agent_id: int, *, at: datetime, actor: str) -> list[int]:
    """Hand back the work a revoked agent holds, in the caller's transaction: the commands app
    answers `agent_revoked` by requeueing them (agents sit below commands and never import
    them, design.md §2). Returns the ids of the released commands."""
    released: list[int] = []
    for _receiver, ids in agent_revoked.send(sender=Agent, agent_id=agent_id, at=at, actor=actor):
        released.extend(cast(list[int], ids))
    return sorted(released)


def _agent_status_write(
    agent_id: int, *, target: str, expected_version: int | None, actor: str, action: str
) -> bool:
    with transaction.atomic():
        row = _agent_locked_state(agent_id)
        if row["status"] == target:
            return False
        _agent_status_check(row, target)
        version_check(_label(agent_id), row, expected_version, who=_WRITERS)
        at = db_now()
        if not versioned_update(
            Agent, agent_id, row["version"], Q(status=row["status"]), {"status": target, "updated_at": at}
        ):
            raise lost_race(_label(agent_id))
        details: dict[str, Any] = {"from_status": row["status"], "to_status": target}
        if target == AgentStatus.REVOKED:
            details["released_commands"] = _agent_held_work_release(agent_id, at=at, actor=actor)
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
        version_check(_label(agent_id), row, expected_version, who=_WRITERS)
        at = db_now()
        values = {"health": AgentHealth.OFFLINE, "last_offline_at": at, "updated_at": at}
        if not versioned_update(Agent, agent_id, row["version"], ~Q(health=AgentHealth.OFFLINE), values):
            raise lost_race(_label(agent_id))
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
    requeues the held jobs). Returns False if nothing changes. Raises ValueError for a
    field operators may not edit, InvalidTransition, ConcurrentModificationError.
    """

    def allowed(row: Mapping[str, Any], changes: Mapping[str, Any]) -> Q:
        target = changes.get("status", row["status"])
        if target != row["status"]:
            _agent_status_check(row, target)
        return Q(status=row["status"])

    with transaction.atomic():
        at = db_now()
        edit = versioned_edit(
            Agent,
            agent_id,
            changes=changes,
            expected_version=expected_version,
            editable=AGENT_OPERATOR_FIELDS,
            label=_label(agent_id),
            read=AGENT_LOCKED_FIELDS,
            guard=allowed,
            also={"updated_at": at},
            who=_WRITERS,
        )
        if edit is None:
            return False
        details: dict[str, Any] = {
            "before": {field: edit.before[field] for field in edit.changes},
            "after": dict(edit.changes),
        }
        if edit.changes.get("status") == AgentStatus.REVOKED:
            details["released_commands"] = _agent_held_work_release(agent_id, at=at, actor=actor)
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
    with transaction.atomic():
        edit = versioned_edit(
            AgentLease,
            lease_id,
            changes=changes,
            expected_version=expected_version,
            editable=("lease_duration_seconds",),
            label=f"lease #{lease_id}",
            who="a renewal",
        )
        if edit is None:
            return False
        audit_record(
            actor=actor,
            action="agent.lease.updated",
            resource_type="agent_lease",
            resource_id=lease_id,
            details={"after": dict(edit.changes)},
        )
    return True
