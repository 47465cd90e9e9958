"""The tenant admin, with an action that fills the queue for demos.

The action writes jobs for every selected tenant, so it needs the tenant change permission
(a view-only user gets a 403) and leaves an audit row naming who enqueued what.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.audit.services import audit_record
from controlplane.commands.services import EnqueueError, command_enqueue_many
from controlplane.common.actors import actor_for_user
from controlplane.common.operator_admin import ActionPermissionDeniedMixin
from controlplane.tenants.admin import TenantAdmin
from controlplane.tenants.models import Tenant

DEMO_JOBS_PER_TENANT = 10


class DemoTenantAdmin(ActionPermissionDeniedMixin, TenantAdmin):
    actions = ["enqueue_demo_jobs"]

    @admin.action(
        description=f"Enqueue {DEMO_JOBS_PER_TENANT} demo platform jobs for each selected tenant",
        permissions=["change"],
    )
    def enqueue_demo_jobs(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        total = 0
        try:
            # All tenants or none: a half-filled demo queue is harder to read than an error.
            with transaction.atomic():
                for tenant in queryset:
                    created = command_enqueue_many(
                        tenant,
                        "demo",
                        [{"n": i} for i in range(DEMO_JOBS_PER_TENANT)],
                        is_platform_job=True,
                    )
                    total += len(created)
                    audit_record(
                        actor=actor_for_user(request.user),
                        action="tenant.demo_jobs_enqueued",
                        resource_type="tenant",
                        resource_id=tenant.pk,
                        details={"jobs": len(created), "kind": "demo"},
                    )
        except EnqueueError as exc:
            self.message_user(request, f"Nothing enqueued: {exc}", level=messages.ERROR)
            return
        self.message_user(request, f"Enqueued {total} demo job(s).", level=messages.SUCCESS)


admin.site.unregister(Tenant)
admin.site.register(Tenant, DemoTenantAdmin)
