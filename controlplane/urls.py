"""URL routes: admin, agent API, health and metrics."""

from django.contrib import admin
from django.urls import include, path

from controlplane import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]
