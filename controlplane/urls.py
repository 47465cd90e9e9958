"""URL routes: admin, agent API, health and metrics."""

from django.contrib import admin
from django.urls import include, path

from controlplane import health
from controlplane.api.api import api, openapi_schema

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("api/schema/", openapi_schema, name="api-schema"),
    path("", include("django_prometheus.urls")),
]
