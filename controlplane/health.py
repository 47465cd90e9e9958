"""Liveness and readiness endpoints for load balancers and orchestrators.

/readyz answers 503 only when the database is unreachable (design.md §10.1): the agent
API needs the database and nothing else, so a Redis outage or a stale controller is reported in the
body (for humans and alerts) but never takes the process out of a load balancer. The body
is public, so it says only the status of each dependency; why one is down (a driver's error
text names hosts, users and versions) goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from controlplane.common.redis import redis_client
from reconcilers.runtime.config import paused_globally
from reconcilers.selectors import controllers_health

log = logging.getLogger(__name__)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and serving requests. Touches nothing else, on purpose."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Each dependency and each controller; 503 only when the database is unreachable."""
    report = readiness_report()
    status = 503 if report["database"]["status"] != "ok" else 200
    return JsonResponse(report, status=status)


def database_check() -> dict[str, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "down"; the reason goes to the log only
        log.warning("readyz: database down: %s: %s", type(exc).__name__, exc)
        return {"status": "down"}
    return {"status": "ok"}


def redis_check() -> dict[str, str]:
    try:
        redis_client().ping()
    except Exception as exc:
        log.warning("readyz: redis down: %s: %s", type(exc).__name__, exc)
        return {"status": "down"}
    return {"status": "ok"}


def readiness_report() -> dict[str, Any]:
    """The /readyz body: `status` (ok | degraded | down), `database`, `redis`, `paused`, `controllers`."""
    database = database_check()
    redis_status = redis_check()
    report: dict[str, Any] = {"database": database, "redis": redis_status}
    if database["status"] != "ok":
        report.update(status="down", paused=None, controllers={})
        return report
    try:
        paused = paused_globally()
        entries = controllers_health(paused=paused)
    except Exception as exc:  # the database answered SELECT 1 but the tables did not
        log.warning("readyz: controller status unavailable: %s", exc)
        report.update(status="down", paused=None, controllers={})
        report["database"] = {"status": "down"}
        return report
    report["paused"] = paused
    report["controllers"] = {entry.name: entry.as_json() for entry in entries}
    healthy = redis_status["status"] == "ok" and all(e.status != "stale" for e in entries)
    report["status"] = "ok" if healthy else "degraded"
    return report
