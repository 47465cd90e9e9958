"""Bootstrap tokens: how platform agents register. Stored as SHA-256 only."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from controlplane.common.db import choices_check


class TokenStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"
    EXHAUSTED = "exhausted", "Exhausted"
    REVOKED = "revoked", "Revoked"


class BootstrapToken(models.Model):
    token_hash = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the token (never the token)."
    )
    token_prefix = models.CharField(
        max_length=16, db_index=True, help_text="First characters, for display and lookup."
    )
    description = models.CharField(max_length=200, blank=True, default="", help_text="What the token is for.")
    status = models.CharField(
        max_length=16,
        choices=TokenStatus.choices,
        default=TokenStatus.ACTIVE,
        help_text="Only active tokens register agents; token-cleanup moves the others.",
    )
    expires_at = models.DateTimeField(help_text="After this the token no longer registers agents.")
    max_uses = models.PositiveIntegerField(default=1, help_text="Registrations allowed.")
    current_uses = models.PositiveIntegerField(
        default=0, help_text="Registrations so far (counted atomically)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Operator who issued it.",
    )
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was issued.")
    revoked_at = models.DateTimeField(null=True, blank=True, help_text="When it was revoked.")
    status_changed_at = models.DateTimeField(null=True, blank=True, help_text="When the status last changed.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=choices_check("status", TokenStatus), name="token_status_valid"),
            models.CheckConstraint(condition=Q(max_uses__gte=1), name="token_max_uses_positive"),
            models.CheckConstraint(
                condition=Q(current_uses__lte=F("max_uses")), name="token_uses_within_max"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="token_status_expiry_idx"),
            # token-cleanup's grace-period deletes, keyed by each status's anchor, oldest first.
            models.Index(
                fields=["revoked_at", "id"], condition=Q(status="revoked"), name="token_revoked_anchor_idx"
            ),
            models.Index(
                fields=["status_changed_at", "id"],
                condition=Q(status="exhausted"),
                name="token_exhausted_anchor_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.token_prefix}… ({self.status})"
