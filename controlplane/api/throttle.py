"""Request limits of the agent API: registrations, and repeated 401s, per client address.

Counters are fixed windows in the Django cache (Redis, shared by every worker and host,
design.md §10.3): the key names the scope, the window number and the client address, and
`incr` is Redis INCR, so concurrent requests never lose a count and at most the burst is
let through per window. A cache error (Redis down or slow) lets the request through and
logs a warning: a Redis outage must not take registration down, and the admin lockout
(database) and the secrets' own strength still stand.

A refused request gets the API's JSON error shape, status 429 and Retry-After (seconds to the
end of the window).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse

from controlplane.common.client import client_address

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
REGISTER_PATH = "/api/v1/agents/register"
CACHE_ERROR_LOG_EVERY_SECONDS = 60.0  # a Redis outage logs once a minute, not once a request


@dataclass(frozen=True)
class Limit:
    scope: str
    burst: int
    window_seconds: int


def register_limit() -> Limit:
    return Limit("register", settings.API_REGISTER_BURST, settings.API_REGISTER_WINDOW_SECONDS)


def unauthorized_limit() -> Limit:
    return Limit("unauthorized", settings.API_UNAUTHORIZED_BURST, settings.API_UNAUTHORIZED_WINDOW_SECONDS)


_last_cache_error = 0.0


def _cache_failed(exc: Exception) -> None:
    global _last_cache_error
    now = time.monotonic()
    if now - _last_cache_error >= CACHE_ERROR_LOG_EVERY_SECONDS:
        _last_cache_error = now
        log.warning("API throttle: cache unavailable, requests pass unthrottled: %s", exc)


def _window(limit: Limit, client: str, now: float) -> tuple[str, int]:
    """The counter's key and the seconds left in the current window."""
    number = int(now // limit.window_seconds)
    left = max(1, math.ceil((number + 1) * limit.window_seconds - now))
    return f"throttle:{limit.scope}:{number}:{client}", left


def throttle_hit(limit: Limit, client: str) -> int | None:
    """Count one request; the seconds to wait if it is over the burst, else None."""
    key, left = _window(limit, client, time.time())
    try:
        count = _incr(key, limit.window_seconds + 1)
    except Exception as exc:  # fail open, on purpose (module docstring)
        _cache_failed(exc)
        return None
    return left if count > limit.burst else None


def throttle_blocked(limit: Limit, client: str) -> int | None:
    """The seconds to wait if `client` is already over the burst, without counting."""
    key, left = _window(limit, client, time.time())
    try:
        count = cache.get(key) or 0
    except Exception as exc:
        _cache_failed(exc)
        return None
    return left if count >= limit.burst else None


def _incr(key: str, timeout: int) -> int:
    try:
        return int(cache.incr(key))
    except ValueError:  # no counter yet in this window
        if cache.add(key, 1, timeout):
            return 1
        return int(cache.incr(key))  # another request created it first


def too_many_requests(retry_after: int) -> HttpResponse:
    response = JsonResponse(
        {"error": "too_many_requests", "detail": f"too many requests, retry after {retry_after} s"},
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    return response


class ApiThrottleMiddleware:
    """Limits requests under /api/v1/ (the agent API); every other path passes untouched."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        client = client_address(request)
        wait = throttle_blocked(unauthorized_limit(), client)
        if wait is None and request.path == REGISTER_PATH and request.method == "POST":
            wait = throttle_hit(register_limit(), client)
        if wait is not None:
            return too_many_requests(wait)
        response = self.get_response(request)
        if response.status_code == 401:
            throttle_hit(unauthorized_limit(), client)
        return response
