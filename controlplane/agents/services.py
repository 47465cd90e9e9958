"""Writes on agents and leases. Every write is a conditional UPDATE that bumps `version`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from controlplane.agents.models import Agent, AgentHealth, AgentLease, AgentStatus
from controlplane.audit.services import audit_record
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
