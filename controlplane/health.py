"""Liveness and readiness endpoints for load balancers and orchestrators.

/readyz answers 503 only when the database is unreachable: the agent API needs the
database and nothing else, so a Redis outage or a stale controller is reported in the
body (for humans and alerts) but never takes the process out of a load balancer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from controlplane.common.db import db_now
from controlplane.common.redis import redis_client
from reconcilers.models import ReconcilerConfig, ReconcileRun, RunOutcome
from reconcilers.registry import controller_get, controller_names
from reconcilers.runtime.runner import paused_globally

log = logging.getLogger(__name__)

# A controller is stale after this many intervals without a successful run: one missed
# tick is noise (a deploy, a busy lock), three is a controller that stopped working.
STALE_AFTER_INTERVALS = 3
ERROR_TEXT_MAX_CHARS = 300  # keep the body small; the log has the full error


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


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX_CHARS]


def database_check() -> dict[str, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "down": the body says which
        log.warning("readyz: database down: %s", exc)
        return {"status": "down", "error": _error_text(exc)}
    return {"status": "ok"}


def redis_check() -> dict[str, str]:
    try:
        redis_client().ping()
    except Exception as exc:
        log.warning("readyz: redis down: %s", exc)
        return {"status": "down", "error": _error_text(exc)}
    return {"status": "ok"}


@dataclass(frozen=True)
class ControllerHealth:
    name: str
    status: str  # ok | stale | disabled | paused | dry_run
    enabled: bool
    dry_run: bool
    interval_seconds: int
    last_success_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "enabled": self.enabled,
            "dry_run": self.dry_run,
            "interval_seconds": self.interval_seconds,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
        }


def controllers_health(*, paused: bool) -> list[ControllerHealth]:
    """One entry per registered controller, in three queries whatever the number of controllers.

    Precedence: paused, then disabled, then stale, then dry_run, else ok. A dry run that
    succeeds counts as a successful run: the controller is alive, just not writing.
    Without any success yet, the stale clock starts when the config row last changed
    (created by migrate), so a fresh install is not reported stale before it had a chance.
    """
    names = controller_names()
    configs = {c.name: c for c in ReconcilerConfig.objects.filter(name__in=names)}
    last_success: dict[str, datetime] = {
        row["controller"]: row["last"]
        for row in ReconcileRun.objects.filter(controller__in=names, outcome=RunOutcome.SUCCESS)
        .values("controller")
        .annotate(last=Max("started_at"))
    }
    now = db_now()
    result = []
    for name in names:
        config = configs.get(name)
        if config is not None:
            enabled, dry_run, interval = config.enabled, config.dry_run, config.interval_seconds
        else:
            enabled, dry_run = True, False
            interval = controller_get(name).default_interval_seconds
        success_at = last_success.get(name)
        anchor = success_at or (config.updated_at if config is not None else None)
        stale = anchor is None or now - anchor > timedelta(seconds=STALE_AFTER_INTERVALS * interval)
        if paused:
            status = "paused"
        elif not enabled:
            status = "disabled"
        elif stale:
            status = "stale"
        elif dry_run:
            status = "dry_run"
        else:
            status = "ok"
        result.append(
            ControllerHealth(
                name=name,
                status=status,
                enabled=enabled,
                dry_run=dry_run,
                interval_seconds=interval,
                last_success_at=success_at,
            )
        )
    return result


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
        report["database"] = {"status": "down", "error": _error_text(exc)}
        return report
    report["paused"] = paused
    report["controllers"] = {entry.name: entry.as_json() for entry in entries}
    healthy = redis_status["status"] == "ok" and all(e.status != "stale" for e in entries)
    report["status"] = "ok" if healthy else "degraded"
    return report
