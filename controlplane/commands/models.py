"""Commands: tenant commands and platform jobs in one table, with their full lifecycle."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from controlplane.common.db import choices_check


class CommandStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"
    EXPIRED = "expired", "Expired"


ACTIVE_STATUSES = (CommandStatus.ACKNOWLEDGED, CommandStatus.RUNNING)
TERMINAL_STATUSES = (
    CommandStatus.COMPLETED,
    CommandStatus.FAILED,
    CommandStatus.CANCELED,
    CommandStatus.EXPIRED,
)


class StatusReason(models.TextChoices):
    """Stable codes for the last controller or operator transition."""

    STUCK = "stuck", "Stuck (no progress)"
    HOLDER_OFFLINE = "holder_offline", "Holder offline or inactive"
    NOT_PICKED_UP = "not_picked_up", "Acknowledged but not started"
    RETRIES_EXHAUSTED = "retries_exhausted", "Retries exhausted"
    QUEUE_TIMEOUT = "queue_timeout", "Waited too long in the queue"
    DEADLINE_PASSED = "deadline_passed", "Deadline passed"
    HOLDER_REVOKED = "holder_revoked", "Holder agent revoked"
    CANCELED_BY_OPERATOR = "canceled_by_operator", "Canceled by an operator"
    RETRIED_BY_OPERATOR = "retried_by_operator", "Retried by an operator"


class Command(models.Model):
    tenant = models.ForeignKey(
        "tenants.Tenant",
        on_delete=models.PROTECT,
        related_name="commands",
        help_text="Tenant the work belongs to.",
    )
    is_platform_job = models.BooleanField(
        default=False, help_text="Platform jobs run on platform agents in dispatch order."
    )
    kind = models.CharField(max_length=100, help_text="What to run, e.g. 'scan' or 'deploy'.")
    payload = models.JSONField(default=dict, blank=True, help_text="Arguments for the agent.")
    status = models.CharField(
        max_length=16,
        choices=CommandStatus.choices,
        default=CommandStatus.PENDING,
        help_text="Lifecycle state; completed, failed, canceled and expired are terminal.",
    )
    target_agent = models.ForeignKey(
        "agents.Agent",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="targeted_commands",
        help_text="Agent a tenant command is pinned to (set at creation, never changed).",
    )
    agent = models.ForeignKey(
        "agents.Agent",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="held_commands",
        help_text="Current holder (the agent that claimed it).",
    )
    queue_priority = models.IntegerField(
        default=0, help_text="Higher is dispatched first; maintained by queue-priority."
    )
    queued_at = models.DateTimeField(help_text="When the job (re-)entered the queue.")
    dispatch_attempts = models.PositiveIntegerField(default=0, help_text="Claims so far (+1 per claim).")
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Deadline; a pending job past it expires."
    )
    acknowledged_at = models.DateTimeField(
        null=True, blank=True, help_text="When the current holder claimed it."
    )
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the holder started it.")
    last_progress_at = models.DateTimeField(null=True, blank=True, help_text="Last progress report.")
    completed_at = models.DateTimeField(null=True, blank=True, help_text="When it reached a terminal state.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was enqueued first.")
    status_reason = models.CharField(
        max_length=32,
        choices=StatusReason.choices,
        blank=True,
        default="",
        help_text="Stable code of the last controller or operator transition.",
    )
    error_message = models.TextField(
        blank=True, default="", help_text="Readable reason for the last failure or requeue."
    )
    version = models.BigIntegerField(default=1, help_text="Optimistic-lock counter, bumped on every write.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=choices_check("status", CommandStatus), name="command_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status_reason="") | choices_check("status_reason", StatusReason),
                name="command_status_reason_valid",
            ),
        ]
        indexes = [
            # Claim path and queue-priority: pending unclaimed platform jobs in dispatch order.
            models.Index(
                models.F("queue_priority").desc(),
                "queued_at",
                "id",
                condition=Q(status="pending", is_platform_job=True, agent__isnull=True),
                name="command_dispatch_idx",
            ),
            # A requeue counts its tenant's waiting platform jobs (at most depth_bonus_max).
            models.Index(
                fields=["tenant"],
                condition=Q(status="pending", is_platform_job=True, agent__isnull=True),
                name="command_tenant_waiting_idx",
            ),
            # Tenant agents claim their tenant's commands, oldest first.
            models.Index(
                fields=["tenant", "queued_at", "id"],
                condition=Q(status="pending", is_platform_job=False),
                name="command_tenant_pending_idx",
            ),
            # job-recovery: active commands (acknowledged/running), by acknowledgement time.
            models.Index(
                fields=["acknowledged_at", "id"],
                condition=Q(status__in=["acknowledged", "running"]),
                name="command_active_idx",
            ),
            models.Index(fields=["agent", "status"], name="command_holder_idx"),
            # job-recovery expiry: pending commands by queue time and by deadline.
            models.Index(
                fields=["queued_at", "id"], condition=Q(status="pending"), name="command_pending_queued_idx"
            ),
            models.Index(
                fields=["expires_at", "id"],
                condition=Q(status="pending", expires_at__isnull=False),
                name="command_pending_deadline_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}#{self.pk}"
