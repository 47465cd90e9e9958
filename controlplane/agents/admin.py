"""Agents in the admin. Creating one issues an API key shown once; health fields are read-only.

Edits and actions go through the agent services: conditional on `version`, audited, so an
admin save never overwrites a concurrent heartbeat (it is refused with "reload" instead).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.agents.models import Agent, AgentLease, AgentStatus
from controlplane.agents.services import (
    AGENT_OPERATOR_FIELDS,
    agent_create,
    agent_force_offline,
    agent_lease_update,
    agent_revoke,
    agent_set_status,
    agent_update,
)
from controlplane.common.actors import actor_for_user
from controlplane.common.operator_admin import (
    SecretShownOnceMixin,
    VersionedChangeForm,
    VersionedModelAdmin,
    operator_action_apply,
    secret_show_once,
)

CONTROLLER_MAINTAINED = [
    "health",
    "last_seen_at",
    "last_offline_at",
    "api_key_hash",
    "api_key_prefix",
    "version",
    "created_at",
    "updated_at",
]


class AgentCreateForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = ["name", "tenant", "capabilities", "max_concurrent_jobs"]
        help_texts = {"tenant": "Leave empty for a platform agent."}


class AgentChangeForm(VersionedChangeForm):
    class Meta:
        model = Agent
        fields = ["name", "status", "capabilities", "max_concurrent_jobs"]

    def clean_status(self) -> str:
        status: str = self.cleaned_data["status"]
        if self.instance.status == AgentStatus.REVOKED and status != AgentStatus.REVOKED:
            raise forms.ValidationError("Revoked is final: a revoked agent cannot be re-enabled.")
        return status


@admin.register(Agent)
class AgentAdmin(SecretShownOnceMixin, VersionedModelAdmin):
    list_display = [
        "name",
        "tenant",
        "is_platform_agent",
        "status",
        "health",
        "last_seen_at",
        "max_concurrent_jobs",
    ]
    list_filter = ["status", "health", "is_platform_agent"]
    search_fields = ["name", "api_key_prefix"]
    list_select_related = ["tenant"]
    readonly_fields = [*CONTROLLER_MAINTAINED, "is_platform_agent", "tenant"]
    show_full_result_count = False
    form = AgentChangeForm
    operator_editable = AGENT_OPERATOR_FIELDS
    actions = ["revoke_selected", "force_offline_selected", "disable_selected", "enable_selected"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = AgentCreateForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return AgentCreateForm.Meta.fields
        return [
            "name",
            "tenant",
            "is_platform_agent",
            "status",
            "capabilities",
            "max_concurrent_jobs",
            *CONTROLLER_MAINTAINED,
            "loaded_version",
        ]

    def update_service(self, pk: int, *, changes: dict[str, Any], expected_version: int, actor: str) -> bool:
        return agent_update(pk, changes=changes, expected_version=expected_version, actor=actor)

    def save_model(self, request: HttpRequest, obj: Agent, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = agent_create(
            name=obj.name,
            tenant=obj.tenant,
            capabilities=obj.capabilities,
            max_concurrent_jobs=obj.max_concurrent_jobs,
            actor=actor_for_user(request.user),
        )
        obj.pk = created.agent.pk
        secret_show_once(request, f"API key for {obj.name}", created.api_key)

    @admin.action(description="Revoke selected agents (requeues their jobs)", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        operator_action_apply(
            self,
            request,
            queryset,
            service=lambda pk, actor: agent_revoke(pk, expected_version=None, actor=actor),
            done="Revoked",
        )

    @admin.action(description="Force selected agents offline", permissions=["change"])
    def force_offline_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        operator_action_apply(
            self,
            request,
            queryset,
            service=lambda pk, actor: agent_force_offline(pk, expected_version=None, actor=actor),
            done="Forced offline",
        )

    @admin.action(description="Disable selected agents", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        operator_action_apply(
            self,
            request,
            queryset,
            service=lambda pk, actor: agent_set_status(
                pk, AgentStatus.DISABLED, expected_version=None, actor=actor
            ),
            done="Disabled",
        )

    @admin.action(description="Enable selected agents", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        operator_action_apply(
            self,
            request,
            queryset,
            service=lambda pk, actor: agent_set_status(
                pk, AgentStatus.ACTIVE, expected_version=None, actor=actor
            ),
            done="Enabled",
        )


class AgentLeaseChangeForm(VersionedChangeForm):
    class Meta:
        model = AgentLease
        fields = ["lease_duration_seconds"]


@admin.register(AgentLease)
class AgentLeaseAdmin(VersionedModelAdmin):
    list_display = ["agent", "holder_identity", "renew_time", "lease_duration_seconds"]
    search_fields = ["agent__name", "holder_identity"]
    list_select_related = ["agent"]
    readonly_fields = ["agent", "holder_identity", "renew_time", "version"]
    fields = ["agent", "holder_identity", "renew_time", "lease_duration_seconds", "version", "loaded_version"]
    form = AgentLeaseChangeForm
    operator_editable = frozenset({"lease_duration_seconds"})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a lease is created by the agent's first heartbeat

    def update_service(self, pk: int, *, changes: dict[str, Any], expected_version: int, actor: str) -> bool:
        return agent_lease_update(pk, changes=changes, expected_version=expected_version, actor=actor)
