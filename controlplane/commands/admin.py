"""Commands in the admin: lifecycle fields are maintained by agents and controllers, so read-only.

Operators cancel and retry through actions and edit payload / deadline of unfinished
commands; all of it goes through the operator services (conditional on `version`, audited),
so a save never overwrites a concurrent claim or progress report.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.commands.models import TERMINAL_STATUSES, Command
from controlplane.commands.operator_services import (
    COMMAND_OPERATOR_FIELDS,
    command_cancel,
    command_retry,
    command_update,
)
from controlplane.common.operator_admin import (
    VersionedChangeForm,
    VersionedModelAdmin,
    operator_action_apply,
)

LIFECYCLE_FIELDS = [
    "status",
    "agent",
    "target_agent",
    "queue_priority",
    "queued_at",
    "dispatch_attempts",
    "acknowledged_at",
    "started_at",
    "last_progress_at",
    "completed_at",
    "created_at",
    "status_reason",
    "error_message",
    "version",
]


class CommandChangeForm(VersionedChangeForm):
    class Meta:
        model = Command
        fields = sorted(COMMAND_OPERATOR_FIELDS)


@admin.register(Command)
class CommandAdmin(VersionedModelAdmin):
    list_display = [
        "id",
        "kind",
        "tenant",
        "is_platform_job",
        "status",
        "status_reason",
        "agent",
        "queue_priority",
        "dispatch_attempts",
        "queued_at",
    ]
    list_filter = ["status", "is_platform_job", "status_reason"]
    search_fields = ["kind", "id"]
    list_select_related = ["tenant", "agent"]
    show_full_result_count = False
    # Set at enqueue and never changed afterwards, or maintained by agents and controllers.
    readonly_fields = ["tenant", "is_platform_job", "kind", *LIFECYCLE_FIELDS]
    fields = [
        "tenant",
        "is_platform_job",
        "kind",
        "payload",
        "expires_at",
        *LIFECYCLE_FIELDS,
        "loaded_version",
    ]
    form = CommandChangeForm
    operator_editable = COMMAND_OPERATOR_FIELDS
    actions = ["cancel_selected", "retry_selected"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.status in TERMINAL_STATUSES:
            return [*self.readonly_fields, *sorted(COMMAND_OPERATOR_FIELDS)]  # finished: never changes
        return self.readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Commands enter through the agent API's enqueue service, which sets queued_at and
        # the queue priority; a bare admin insert would skip both.
        return False

    def update_service(self, pk: int, *, changes: dict[str, Any], expected_version: int, actor: str) -> bool:
        return command_update(pk, changes=changes, expected_version=expected_version, actor=actor)

    @admin.action(description="Cancel selected commands", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Command]) -> None:
        operator_action_apply(
            self,
            request,
            queryset,
            service=lambda pk, actor: command_cancel(pk, expected_version=None, actor=actor),
            done="Canceled",
        )

    @admin.action(description="Retry selected failed commands (attempts reset)", permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Command]) -> None:
        operator_action_apply(
            self,
            request,
            queryset,
            service=lambda pk, actor: command_retry(pk, expected_version=None, actor=actor),
            done="Retried",
        )
