"""Liveness and readiness endpoints for load balancers and orchestrators.

/readyz answers 503 only when the database is unreachable (design.md §10.1): the agent
API needs the database and nothing else, so a Redis outage or a stale controller is reported in the
body (for humans and alerts) but never takes the process out of a load balancer. The body
is public, so it says only the status of each dependency; why one is down (a driver's error
text names hosts, users and versions) goes to the log.

It follows the deployment: Redis is checked only when the locks live there
(RECONCILERS_LOCK_BACKEND=redis), and the broker is pinged within BROKER_TIMEOUT_SECONDS,
the answer kept for BROKER_CACHE_SECONDS, so a probe every second costs one ping per
process every few seconds and a black-holed broker never holds a probe longer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from controlplane.common.redis import redis_client
from reconcilers.runtime.config import paused_globally
from reconcilers.selectors import controllers_health

log = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 1.0  # a readiness probe waits at most this long for the broker
BROKER_CACHE_SECONDS = 5.0  # one broker ping per process in this window, whatever the probe rate


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


_broker_lock = threading.Lock()  # one ping at a time; concurrent probes wait for its answer
_broker_answers: dict[str, tuple[float, dict[str, str]]] = {}  # broker URL -> (monotonic time, answer)


def broker_check() -> dict[str, str]:
    """The broker's answer to a connection and ping within BROKER_TIMEOUT_SECONDS, cached for
    BROKER_CACHE_SECONDS (per broker URL, so a changed setting is asked afresh)."""
    url = settings.CELERY_BROKER_URL
    with _broker_lock:
        cached = _broker_answers.get(url)
        if cached and time.monotonic() - cached[0] < BROKER_CACHE_SECONDS:
            return cached[1]
        answer = _broker_ping_within(BROKER_TIMEOUT_SECONDS)
        _broker_answers[url] = (time.monotonic(), answer)
        return answer


def _broker_ping_within(timeout_seconds: float) -> dict[str, str]:
    """Ping in a daemon thread and wait at most `timeout_seconds`: the transports' own
    timeouts are set to it too, but a thread bounds every step of every transport (DNS,
    TLS, Sentinel discovery, AMQP handshake) at once. A ping still blocked is left to end
    on its own timeouts."""
    answer: dict[str, str] = {}
    reason: list[str] = []  # why it is down: for the log only, never the public body

    def ping() -> None:
        try:
            _broker_ping(timeout_seconds)
            answer.update(status="ok")
        except Exception as exc:  # any failure means "down"
            reason.append(f"{type(exc).__name__}: {exc}")
            answer.update(status="down")

    probe = threading.Thread(target=ping, name="readyz-broker-ping", daemon=True)
    probe.start()
    probe.join(timeout_seconds)
    if not answer:
        answer = {"status": "down"}
        reason.append(f"no answer within {timeout_seconds:g} s")
    if answer["status"] != "ok":
        log.warning("readyz: broker down: %s", reason[0] if reason else "unknown")
    return dict(answer)


def _broker_ping(timeout_seconds: float) -> None:
    """Connect to CELERY_BROKER_URL with the workers' transport options and TLS settings."""
    from kombu import Connection

    options = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        # Redis and Sentinel transports (connecting opens a channel, which PINGs the server).
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
    }
    with Connection(
        settings.CELERY_BROKER_URL,
        ssl=settings.CELERY_BROKER_USE_SSL,
        connect_timeout=timeout_seconds,
        transport_options=options,
    ) as broker:
        broker.ensure_connection(max_retries=0)  # one attempt: the probe reports, never waits to retry


def readiness_report() -> dict[str, Any]:
    """The /readyz body: `status` (ok | degraded | down), `database`, `lock_backend`, `redis` (with
    the Redis lock backend only), `broker`, `paused`, `controllers`.

    `degraded` means the controllers cannot make progress: the Redis of the locks is down, or a
    controller is stale. The broker's state is reported but not counted: a deployment without
    Celery (`runcontrollers`) has none to reach, and in one that has, a broker outage stops
    the runs, which shows as stale controllers."""
    database = database_check()
    report: dict[str, Any] = {"database": database, "lock_backend": settings.RECONCILERS_LOCK_BACKEND}
    # The database lock backend keeps its locks in the database checked above.
    lock_ok = True
    if settings.RECONCILERS_LOCK_BACKEND == "redis":
        report["redis"] = redis_check()
        lock_ok = report["redis"]["status"] == "ok"
    report["broker"] = broker_check()
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
    healthy = lock_ok and all(e.status != "stale" for e in entries)
    report["status"] = "ok" if healthy else "degraded"
    return report
