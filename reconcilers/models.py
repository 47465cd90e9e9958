"""Reconciler configuration (the operator's knobs), fencing state, global switches and run history."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from controlplane.common.db import choices_check


class ReconcilerConfig(models.Model):
    """One row per controller: the single source of truth for its schedule and parameters.

    Written only through `reconcilers.services.config_update`, which validates, audits and
    syncs the django-celery-beat schedule in the same transaction. Read through
    `reconcilers.runtime.config` (design.md §4.2).
    """

    controller = models.CharField(
        max_length=64, unique=True, db_column="name", help_text="Controller name, e.g. agent-health."
    )
    enabled = models.BooleanField(
        default=True, help_text="Disabled controllers skip every run (reason 'disabled')."
    )
    interval_seconds = models.PositiveIntegerField(
        help_text="Seconds between scheduled runs (1..604800), unless a crontab is set."
    )
    crontab = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text=(
            "A five-field crontab (minute hour day-of-month month day-of-week), e.g. '0 3 * * *' for "
            "03:00 every day; empty: run every interval_seconds. Day of month and day of week must both "
            "match, as in Celery beat."
        ),
    )
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA time zone the crontab is read in, e.g. Europe/Paris."
    )
    dry_run = models.BooleanField(default=False, help_text="Report what would change, change nothing.")
    run_timeout_seconds = models.PositiveIntegerField(
        help_text="A run stops at the next batch boundary after this."
    )
    params = models.JSONField(
        default=dict, blank=True, help_text="Controller parameters, validated by its schema."
    )
    version = models.BigIntegerField(default=1, help_text="Optimistic-lock counter, bumped on every write.")
    updated_at = models.DateTimeField(auto_now=True, help_text="Last change.")

    class Meta:
        ordering = ["controller"]
        verbose_name = "reconciler"
        # Deleting audit history is more than tuning a controller: the general change
        # permission does not cover it (design.md §7).
        permissions = [
            (
                "change_audit_retention",
                "Can change audit-retention's config and run it for real",
            )
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(interval_seconds__gte=1) & Q(interval_seconds__lte=604800),
                name="reconcilerconfig_interval_range",
            ),
            models.CheckConstraint(
                condition=Q(run_timeout_seconds__gte=1) & Q(run_timeout_seconds__lte=86400),
                name="reconcilerconfig_timeout_range",
            ),
        ]

    def __str__(self) -> str:
        return self.controller


class ReconcilerState(models.Model):
    """Per-controller runtime state: the fencing counter and the last real start.

    The fence lives in the database, not in Redis: a Redis without persistence that
    restarts would hand out token 1 again and let an old holder write.
    """

    controller = models.CharField(max_length=64, unique=True, help_text="Controller name.")
    fence = models.BigIntegerField(default=0, help_text="Fencing token of the newest lock grant.")
    lock_holder = models.CharField(
        max_length=200, blank=True, default="", help_text="Host/process of the newest grant."
    )
    granted_at = models.DateTimeField(null=True, blank=True, help_text="When the newest grant was taken.")
    last_real_started_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Start of the last successful real (not dry) run; the too-soon anchor.",
    )
    lock_token = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Database lease lock (RECONCILERS_LOCK_BACKEND=database): the holder's random token.",
    )
    lock_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Database lease lock: the lease ends here unless renewed."
    )

    def __str__(self) -> str:
        return f"{self.controller} fence={self.fence}"


class GlobalPause(models.Model):
    """Singleton row (pk=1): the global pause, every run skips while it is on (design.md §4.9)."""

    paused = models.BooleanField(default=False, help_text="Every run skips with reason 'paused'.")
    changed_by = models.CharField(max_length=200, blank=True, default="", help_text="Who changed it last.")
    changed_at = models.DateTimeField(null=True, blank=True, help_text="When it changed last.")

    class Meta:
        db_table = "reconcilers_runtimeswitch"  # its name before the rename: upgrades move no data
        verbose_name = "global pause"
        verbose_name_plural = "global pause"

    def __str__(self) -> str:
        return "paused" if self.paused else "running"


class RunOutcome(models.TextChoices):
    RUNNING = "running", "Running"  # the run holds its grant; items are what has committed so far
    SUCCESS = "success", "Success"
    ERROR = "error", "Error"
    SKIPPED = "skipped", "Skipped"


class RunReason(models.TextChoices):
    """Closed set of skip and error reasons (runs, CLI JSON and metrics share it)."""

    DISABLED = "disabled", "Disabled"
    PAUSED = "paused", "Paused"
    LOCKED = "locked", "Locked by another run"
    LOCK_UNAVAILABLE = "lock_unavailable", "Lock backend unavailable"
    TOO_SOON = "too_soon", "Too soon after the previous run"
    LOCK_LOST = "lock_lost", "Lock lost (fenced out)"
    TIMEOUT = "timeout", "Run timeout"
    EXCEPTION = "exception", "Exception"
    INVALID_CONFIG = "invalid_config", "Config row fails its schema"
    ABANDONED = "abandoned", "Abandoned (a newer grant found it still running)"


class ReconcileRun(models.Model):
    controller = models.CharField(max_length=64, help_text="Controller name.")
    started_at = models.DateTimeField(help_text="Start (database clock).")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="End (database clock).")
    outcome = models.CharField(
        max_length=16, choices=RunOutcome.choices, help_text="running, success, error or skipped."
    )
    reason = models.CharField(
        max_length=32,
        choices=RunReason.choices,
        blank=True,
        default="",
        help_text="Why it was skipped or failed.",
    )
    items = models.IntegerField(
        default=0, help_text="Sum of the step counts: what has committed, while running and after an error."
    )
    steps = models.JSONField(
        default=dict, blank=True, help_text="Rows changed per step, updated in each batch's transaction."
    )
    would_change = models.JSONField(
        default=dict, blank=True, help_text="Dry run: rows a real run would change."
    )
    flags = models.JSONField(default=dict, blank=True, help_text="e.g. brake_engaged.")
    dry_run = models.BooleanField(default=False, help_text="Dry run: nothing was changed.")
    forced = models.BooleanField(default=False, help_text="Bypassed too-soon, disabled and paused.")
    fence = models.BigIntegerField(null=True, blank=True, help_text="Fencing token of this run's grant.")
    worker_host = models.CharField(
        max_length=200, blank=True, default="", help_text="Host and process that ran it."
    )
    error = models.TextField(blank=True, default="", help_text="Error text with traceback.")
    task_id = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="Celery task id of the message that started the run (empty: CLI or manager).",
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=choices_check("outcome", RunOutcome), name="reconcilerun_outcome_valid"
            ),
            models.CheckConstraint(
                condition=Q(reason="") | choices_check("reason", RunReason), name="reconcilerun_reason_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["controller", "started_at"], name="reconcilerun_controller_idx"),
            # The few rows still running: what a new grant closes as abandoned (design.md §4.10).
            models.Index(
                fields=["controller", "fence"],
                condition=Q(outcome="running"),
                name="reconcilerun_running_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.controller} {self.started_at:%Y-%m-%d %H:%M:%S} {self.outcome}"
