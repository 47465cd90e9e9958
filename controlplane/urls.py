"""URL routes: admin, agent API, health and metrics."""

from django.contrib import admin
from django.urls import path

from controlplane import health, metrics_view
from controlplane.api.api import api, openapi_schema
from controlplane.api.docs import api_docs
from reconcilers import dashboard

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Before admin.site.urls, whose app catch-all would otherwise claim admin/reconcilers/...
    path(
        "admin/reconcilers/dashboard/",
        admin.site.admin_view(dashboard.dashboard),
        name="reconcilers-dashboard",
    ),
    path(
        "admin/reconcilers/dashboard/<str:name>/dry-run/",
        admin.site.admin_view(dashboard.dry_run_now),
        name="reconcilers-dashboard-dry-run",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("api/schema/", openapi_schema, name="api-schema"),
    path("api/docs/", api_docs, name="api-docs"),
    path("metrics", metrics_view.metrics, name="metrics"),
]
