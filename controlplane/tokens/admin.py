"""Bootstrap tokens in the admin: issuing shows the raw token once; only the hash is stored.

Issuing needs the add permission, revoking the change permission; both are audited by
the token services. The lifecycle fields belong to registrations and token-cleanup.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.audit.services import audit_record
from controlplane.common.actors import actor_for_user
from controlplane.common.operator_admin import SecretShownOnceMixin, operator_action_apply, secret_show_once
from controlplane.tokens.models import BootstrapToken
from controlplane.tokens.services import token_issue, token_revoke


class TokenIssueForm(forms.ModelForm):
    valid_for_hours = forms.IntegerField(
        min_value=1, max_value=24 * 365, initial=24, help_text="Hours until it expires."
    )

    class Meta:
        model = BootstrapToken
        fields = ["description", "max_uses"]


@admin.register(BootstrapToken)
class BootstrapTokenAdmin(SecretShownOnceMixin, admin.ModelAdmin):
    list_display = [
        "token_prefix",
        "description",
        "status",
        "current_uses",
        "max_uses",
        "expires_at",
        "created_at",
    ]
    list_filter = ["status"]
    search_fields = ["token_prefix", "description"]
    actions = ["revoke_selected"]
    readonly_fields = [
        "token_hash",
        "token_prefix",
        "status",
        "expires_at",
        "current_uses",
        "created_by",
        "created_at",
        "revoked_at",
        "status_changed_at",
        "max_uses",  # fixed at issue: the uses CHECK and registrations count against it
    ]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = TokenIssueForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["description", "max_uses", "valid_for_hours"]
        return ["description", *self.readonly_fields]

    def save_model(self, request: HttpRequest, obj: BootstrapToken, form: Any, change: bool) -> None:
        if change:
            # Only the description is editable: writing just that column never rewinds a
            # concurrent registration's current_uses or token-cleanup's status change.
            if "description" in form.changed_data:
                with transaction.atomic():
                    BootstrapToken.objects.filter(pk=obj.pk).update(description=obj.description)
                    audit_record(
                        actor=actor_for_user(request.user),
                        action="token.updated",
                        resource_type="bootstrap_token",
                        resource_id=obj.pk,
                        details={"description": obj.description},
                    )
            return
        issued = token_issue(
            description=form.cleaned_data["description"],
            ttl=timedelta(hours=form.cleaned_data["valid_for_hours"]),
            max_uses=form.cleaned_data["max_uses"],
            actor=actor_for_user(request.user),
            created_by_id=request.user.pk,
        )
        obj.pk = issued.token.pk
        secret_show_once(request, "Bootstrap token", issued.raw)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # tokens are revoked, and token-cleanup deletes them after the grace period

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[BootstrapToken]) -> None:
        operator_action_apply(
            self, request, queryset, service=lambda pk, actor: token_revoke(pk, actor=actor), done="Revoked"
        )
