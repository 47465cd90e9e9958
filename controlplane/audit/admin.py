from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from controlplane.audit.models import AuditLog


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    """Read-only: the audit log is append-only and only audit-retention deletes."""

    list_display = ["created_at", "actor", "action", "resource_type", "resource_id", "success"]
    list_filter = ["action", "success", "resource_type"]
    search_fields = ["actor", "action", "resource_id"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # COUNT(*) over millions of rows on every page is not free

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
