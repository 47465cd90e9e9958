"""Tenant admin: names and plans. (The demo app adds an action that fills the queue.)"""

from __future__ import annotations

from django.contrib import admin

from controlplane.tenants.models import Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "plan", "created_at"]
    list_filter = ["plan"]
    search_fields = ["name"]
