"""The tenant admin, with an action that fills the queue for demos."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.commands.services import EnqueueError, command_enqueue_many
from controlplane.tenants.admin import TenantAdmin
from controlplane.tenants.models import Tenant

DEMO_JOBS_PER_TENANT = 10


class DemoTenantAdmin(TenantAdmin):
    actions = ["enqueue_demo_jobs"]

    @admin.action(description=f"Enqueue {DEMO_JOBS_PER_TENANT} demo platform jobs for each selected tenant")
    def enqueue_demo_jobs(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        total = 0
        try:
            # All tenants or none: a half-filled demo queue is harder to read than an error.
            with transaction.atomic():
                for tenant in queryset:
                    total += len(
                        command_enqueue_many(
                            tenant,
                            "demo",
                            [{"n": i} for i in range(DEMO_JOBS_PER_TENANT)],
                            is_platform_job=True,
                        )
                    )
        except EnqueueError as exc:
            self.message_user(request, f"Nothing enqueued: {exc}", level=messages.ERROR)
            return
        self.message_user(request, f"Enqueued {total} demo job(s).", level=messages.SUCCESS)


admin.site.unregister(Tenant)
admin.site.register(Tenant, DemoTenantAdmin)
