"""Commands in the admin: lifecycle fields are maintained by agents and controllers, so read-only."""

from __future__ import annotations

from django.contrib import admin

from controlplane.commands.models import Command


@admin.register(Command)
class CommandAdmin(admin.ModelAdmin):
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
    readonly_fields = [
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
