"""Agents in the admin. Creating one issues an API key shown once; health fields are read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import F
from django.db.models.functions import Now
from django.http import HttpRequest

from controlplane.agents.models import Agent, AgentLease
from controlplane.agents.services import agent_create
from controlplane.audit.services import actor_for_user

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


OPERATOR_EDITABLE = ["name", "status", "capabilities", "max_concurrent_jobs"]


class AgentCreateForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = ["name", "tenant", "capabilities", "max_concurrent_jobs"]
        help_texts = {"tenant": "Leave empty for a platform agent."}


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
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
        ]

    def save_model(self, request: HttpRequest, obj: Agent, form: Any, change: bool) -> None:
        if change:
            # Write only what the operator changed, so a save never overwrites the
            # health fields a concurrent heartbeat or sweep just wrote.
            changed = {f: getattr(obj, f) for f in form.changed_data if f in OPERATOR_EDITABLE}
            if changed:
                Agent.objects.filter(pk=obj.pk).update(**changed, version=F("version") + 1, updated_at=Now())
            return
        created = agent_create(
            name=obj.name,
            tenant=obj.tenant,
            capabilities=obj.capabilities,
            max_concurrent_jobs=obj.max_concurrent_jobs,
            actor=actor_for_user(request.user),
        )
        obj.pk = created.agent.pk
        messages.warning(request, f"API key for {obj.name} (shown once, copy it now): {created.api_key}")


@admin.register(AgentLease)
class AgentLeaseAdmin(admin.ModelAdmin):
    list_display = ["agent", "holder_identity", "renew_time", "lease_duration_seconds"]
    search_fields = ["agent__name", "holder_identity"]
    list_select_related = ["agent"]
    readonly_fields = ["agent", "holder_identity", "renew_time", "version"]
