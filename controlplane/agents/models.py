"""Agents (the fleet that runs jobs) and their K8s-style leases."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from controlplane.common.db import choices_check


class AgentStatus(models.TextChoices):
    """Admin-controlled: only active agents authenticate or get work."""

    ACTIVE = "active", "Active"
    DISABLED = "disabled", "Disabled"
    REVOKED = "revoked", "Revoked"


class AgentHealth(models.TextChoices):
    """Automatic: set online by heartbeats, offline by agent-health."""

    UNKNOWN = "unknown", "Unknown"
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    ERROR = "error", "Error"


LEASE_DURATION_MIN_SECONDS = 10
LEASE_DURATION_MAX_SECONDS = 300
LEASE_DURATION_DEFAULT_SECONDS = 60


class Agent(models.Model):
    tenant = models.ForeignKey(
        "tenants.Tenant",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="agents",
        help_text="Owning tenant; empty for platform agents.",
    )
    name = models.CharField(max_length=200, help_text="Name the agent registered with.")
    is_platform_agent = models.BooleanField(
        default=False,
        help_text="Platform agents run platform jobs; tenant agents run their tenant's commands.",
    )
    status = models.CharField(
        max_length=16,
        choices=AgentStatus.choices,
        default=AgentStatus.ACTIVE,
        help_text="Admin-controlled; only active agents authenticate or get work.",
    )
    health = models.CharField(
        max_length=16,
        choices=AgentHealth.choices,
        default=AgentHealth.UNKNOWN,
        help_text="Maintained automatically by heartbeats and the agent-health controller.",
    )
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="Last heartbeat (database clock).")
    last_offline_at = models.DateTimeField(
        null=True, blank=True, help_text="When the agent was last marked offline."
    )
    capabilities = models.JSONField(default=list, blank=True, help_text="List of capability strings.")
    max_concurrent_jobs = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Claims are refused while the agent holds this many jobs.",
    )
    api_key_hash = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the API key (the key is never stored)."
    )
    api_key_prefix = models.CharField(
        max_length=16, db_index=True, help_text="First characters of the key, for lookup."
    )
    version = models.BigIntegerField(default=1, help_text="Optimistic-lock counter, bumped on every write.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When the agent was created.")
    updated_at = models.DateTimeField(auto_now=True, help_text="Last write to the row.")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=choices_check("status", AgentStatus), name="agent_status_valid"),
            models.CheckConstraint(condition=choices_check("health", AgentHealth), name="agent_health_valid"),
            models.CheckConstraint(
                condition=Q(max_concurrent_jobs__gte=1), name="agent_max_concurrent_jobs_positive"
            ),
            models.CheckConstraint(
                condition=Q(is_platform_agent=True, tenant__isnull=True)
                | Q(is_platform_agent=False, tenant__isnull=False),
                name="agent_platform_xor_tenant",
            ),
        ]
        indexes = [
            # agent-health's stale sweep: online agents, oldest heartbeat first.
            models.Index(
                fields=["last_seen_at", "id"], condition=Q(health="online"), name="agent_online_seen_idx"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AgentLease(models.Model):
    """One lease per platform agent, renewed with every heartbeat (Kubernetes Lease style).

    Expired when renew_time + lease_duration_seconds + lease_grace < now.
    """

    agent = models.OneToOneField(
        Agent, on_delete=models.CASCADE, related_name="lease", help_text="The leasing agent."
    )
    holder_identity = models.CharField(max_length=200, help_text="Identity of the process holding the lease.")
    lease_duration_seconds = models.PositiveIntegerField(
        default=LEASE_DURATION_DEFAULT_SECONDS,
        validators=[
            MinValueValidator(LEASE_DURATION_MIN_SECONDS),
            MaxValueValidator(LEASE_DURATION_MAX_SECONDS),
        ],
        help_text="Seconds the lease stays valid after a renewal (10..300).",
    )
    renew_time = models.DateTimeField(help_text="Last renewal (database clock).")
    version = models.BigIntegerField(default=1, help_text="Optimistic-lock counter, bumped on every write.")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(lease_duration_seconds__gte=LEASE_DURATION_MIN_SECONDS)
                & Q(lease_duration_seconds__lte=LEASE_DURATION_MAX_SECONDS),
                name="agentlease_duration_range",
            )
        ]
        indexes = [models.Index(fields=["renew_time", "id"], name="agentlease_renew_idx")]

    def __str__(self) -> str:
        return f"lease of {self.agent_id}"
