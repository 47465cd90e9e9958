"""GET /metrics: every series of this process (or of all gunicorn workers in multiprocess
mode) plus the controller config gauges, read from the database at scrape time."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reconcilers.runtime.metrics import multiprocess_registry


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(multiprocess_registry()), content_type=CONTENT_TYPE_LATEST)
