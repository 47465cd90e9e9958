"""agent-health: agents that stopped heartbeating (or whose lease expired) become offline,
and expired leases are deleted (design.md §5.1).

Only `online` agents are judged: unknown (never seen), error (reported by the agent)
and offline agents are left alone, and the admin `status` is never touched. Every
UPDATE re-checks staleness on the agent row itself, so a heartbeat that commits while
the sweep runs wins (PostgreSQL re-evaluates the WHERE clause on the new row version).
A safety brake refuses to mark a large share of the fleet offline at once: that is far
more likely a broken heartbeat path than a dead fleet (Kubernetes node eviction does
the same).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar

from django.conf import settings
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Now
from django.db.models.lookups import GreaterThan
from pydantic import Field, field_validator

from controlplane.agents.models import LEASE_DURATION_MIN_SECONDS, Agent, AgentHealth, AgentLease
from reconcilers.queries.batches import delete_in_batches, update_in_batches
from reconcilers.queries.expressions import MicrosecondsSince
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

BATCH_SIZE = 5000  # agents or leases per statement; one short transaction each
STALE_TIMEOUT_MAX_SECONDS = 86400
STALE_TIMEOUT_FLOOR_SECONDS = 90  # the default never drops below this, whatever the heartbeat
STALE_HEARTBEATS_DEFAULT = 3  # the default tolerates two missed heartbeats, marks the third


def stale_timeout_default() -> int:
    """Follows AGENT_HEARTBEAT_INTERVAL_SECONDS, so raising the heartbeat interval never leaves
    agent-health on a timeout shorter than two heartbeats (design.md §5.1)."""
    return max(
        STALE_TIMEOUT_FLOOR_SECONDS, STALE_HEARTBEATS_DEFAULT * settings.AGENT_HEARTBEAT_INTERVAL_SECONDS
    )


class AgentHealthParams(ControllerParams):
    stale_timeout_seconds: int = Field(
        default_factory=stale_timeout_default,
        le=STALE_TIMEOUT_MAX_SECONDS,
        description="An online agent silent for longer is marked offline (>= 2 heartbeat intervals; "
        "default max(90, 3 x heartbeat)).",
    )
    lease_grace_seconds: int = Field(0, ge=0, le=3600, description="Extra seconds before a lease expires.")
    max_offline_fraction: float = Field(
        0.5, gt=0, le=1, description="Brake: refuse to mark more than this share of online agents (1 = off)."
    )
    brake_min_agents: int = Field(
        10, ge=0, le=1_000_000, description="Brake: never engage when at most this many agents would go."
    )

    @field_validator("stale_timeout_seconds")
    @classmethod
    def _at_least_two_heartbeats(cls, value: int) -> int:
        # One missed heartbeat is jitter; two in a row is an outage.
        floor = 2 * settings.AGENT_HEARTBEAT_INTERVAL_SECONDS
        if value < floor:
            raise ValueError(
                f"must be at least 2 x AGENT_HEARTBEAT_INTERVAL_SECONDS ({floor} s), got {value}"
            )
        return value


def expired_leases(now: datetime, grace_seconds: int) -> QuerySet[AgentLease]:
    """Leases with renew_time + lease_duration_seconds + grace < now (exact to the microsecond)."""
    # The plain bound on renew_time (shortest possible lease) lets the index do the seek.
    bound = now - timedelta(seconds=LEASE_DURATION_MIN_SECONDS + grace_seconds)
    return AgentLease.objects.filter(renew_time__lt=bound).filter(
        GreaterThan(
            MicrosecondsSince(now, "renew_time"),
            (F("lease_duration_seconds") + Value(grace_seconds)) * Value(1_000_000),
        )
    )


class AgentHealthController(Controller):
    name: ClassVar[str] = "agent-health"
    default_interval_seconds: ClassVar[int] = 30
    step_names: ClassVar[tuple[str, ...]] = ("stale_offline", "lease_offline", "leases_deleted")
    Params: ClassVar[type[ControllerParams]] = AgentHealthParams

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        params: AgentHealthParams = ctx.params
        now = ctx.now
        online = Agent.objects.filter(health=AgentHealth.ONLINE)
        stale_cutoff = now - timedelta(seconds=params.stale_timeout_seconds)
        lease_cutoff = self._lease_recent_cutoff(now, params)
        stale = online.filter(self._not_seen_since(stale_cutoff))
        # The lease lives in another table, which PostgreSQL does not re-read when a
        # concurrent heartbeat updates the agent row; the agent's own last_seen_at (the
        # heartbeat writes it together with the lease) is what keeps such an agent online.
        # So the expired lease is found when the batch is picked, and the UPDATE re-checks
        # last_seen_at on the agent row.
        not_seen_lately = online.filter(self._not_seen_since(lease_cutoff))

        # Expired leases of online agents not seen lately: step 2's agents, found from the
        # leases' renew_time index (expired leases are few, online agents are many).
        lease_picks = (
            expired_leases(now, params.lease_grace_seconds)
            .filter(agent__health=AgentHealth.ONLINE)
            .filter(self._not_seen_since(lease_cutoff, "agent__"))
        )

        flags = {"brake_engaged": False, "brake_overridden": False}
        # Two index walks that never overlap (stale agents; expired leases of agents that are
        # not stale), instead of a scan of the whole fleet probing a lease per agent.
        would_go = stale.count() + lease_picks.filter(agent__last_seen_at__gte=stale_cutoff).count()
        if self._brake_holds(would_go, online, params):
            if not ctx.ignore_brake:
                flags["brake_engaged"] = True
                ctx.log.warning(
                    "%s brake engaged: %d agents would go offline, more than %s of the online fleet; "
                    "marking none and deleting no lease (override once with --ignore-brake)",
                    self.name,
                    would_go,
                    params.max_offline_fraction,
                    extra={"controller": self.name, "brake_engaged": True, "count": would_go},
                )
                for step in self.step_names:
                    ctx.log_step(step, 0)
                return self.result(flags=flags)
            flags["brake_overridden"] = True
            ctx.log.warning("%s brake overridden by the operator: %d agents go offline", self.name, would_go)

        offline_values = {
            "health": AgentHealth.OFFLINE,
            "last_offline_at": now,
            "version": F("version") + 1,
            "updated_at": Now(),
        }
        stale_count, stale_ids = update_in_batches(
            ctx,
            stale,
            "last_seen_at",
            BATCH_SIZE,
            offline_values,
            step="stale_offline",
            nulls_first=True,
            key_below=stale_cutoff,
        )
        ctx.log_step("stale_offline", stale_count, stale_ids)

        # Step 1's agents are offline now, so neither the picks nor the UPDATE match them.
        lease_count, lease_ids = update_in_batches(
            ctx,
            not_seen_lately,
            "renew_time",
            BATCH_SIZE,
            offline_values,
            step="lease_offline",
            picked_from=lease_picks,
            picked_field="agent_id",
            sparse=True,  # found by a join: one SELECT, not one per batch
        )
        ctx.log_step("lease_offline", lease_count, lease_ids)

        deleted, deleted_ids = delete_in_batches(
            ctx,
            expired_leases(now, params.lease_grace_seconds),
            "renew_time",
            BATCH_SIZE,
            step="leases_deleted",
        )
        ctx.log_step("leases_deleted", deleted, deleted_ids)
        return self.result(
            stale_offline=stale_count, lease_offline=lease_count, leases_deleted=deleted, flags=flags
        )

    @staticmethod
    def _lease_recent_cutoff(now: datetime, params: AgentHealthParams) -> datetime:
        return now - timedelta(seconds=LEASE_DURATION_MIN_SECONDS + params.lease_grace_seconds)

    @staticmethod
    def _not_seen_since(cutoff: datetime, prefix: str = "") -> Q:
        """No heartbeat since `cutoff` (`prefix` reaches the agent from a related model)."""
        return Q(**{f"{prefix}last_seen_at__lt": cutoff}) | Q(**{f"{prefix}last_seen_at__isnull": True})

    @staticmethod
    def _brake_holds(would_go: int, online: QuerySet[Agent], params: AgentHealthParams) -> bool:
        # The fleet is counted only when the brake could engage at all.
        if would_go <= params.brake_min_agents:
            return False
        return would_go / max(online.count(), 1) > params.max_offline_fraction
