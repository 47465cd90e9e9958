"""Tenants: the customers whose plan sets their jobs' base priority."""

from __future__ import annotations

from django.db import models

from controlplane.common.db import choices_check


class Plan(models.TextChoices):
    FREE = "free", "Free"
    TEAM = "team", "Team"
    BUSINESS = "business", "Business"
    ENTERPRISE = "enterprise", "Enterprise"


class Tenant(models.Model):
    name = models.CharField(max_length=200, unique=True, help_text="Display name, unique.")
    plan = models.CharField(
        max_length=20,
        choices=Plan.choices,
        default=Plan.FREE,
        help_text="Subscription plan; sets the base queue priority of the tenant's platform jobs.",
    )
    created_at = models.DateTimeField(auto_now_add=True, help_text="When the tenant was created.")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=choices_check("plan", Plan), name="tenant_plan_valid")
        ]

    def __str__(self) -> str:
        return self.name
