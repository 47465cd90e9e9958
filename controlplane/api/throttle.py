"""Request limits of the agent API: registrations, and repeated 401s, per client address.

Counters are fixed windows in the Django cache (Redis, shared by every worker and host,
design.md §10.3): the key names the scope, the window number and the client address, and
`incr` is Redis INCR, so concurrent requests never lose a count and at most the burst is
let through per window. A cache error (Redis down or slow) lets the request through and
logs a warning: a Redis outage must not take registration down, and the admin lockout
(database) and the secrets' own strength still stand.

A refused request gets the API's JSON error shape, status 429 and Retry-After (seconds to the
end of the window).

Refusing an address over its 401 burst costs no Redis round trip per request (a heartbeat
is the product's most frequent request, and that read was a tenth of its CPU). The 401 that
brings an address's count to the burst also adds the address to the window's blocked set in
Redis, and each process keeps a copy of that set (`_BlockedCopy`), read again at most once
every BLOCKED_REFRESH_SECONDS. So the process that counted the burst refuses the address at
once, and every other worker and host within BLOCKED_REFRESH_SECONDS; before that, each of
the address's 401s there is still counted in Redis, and the first one that sees the count at
the burst refuses the address in that process too: a guesser gains at most one request per
process.
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

from controlplane.common.cache import CACHE_TIMEOUT_SECONDS
from controlplane.common.client import client_address
from controlplane.common.redis import redis_client

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
REGISTER_PATH = "/api/v1/agents/register"
CACHE_ERROR_LOG_EVERY_SECONDS = 60.0  # a Redis outage logs once a minute, not once a request
BLOCKED_REFRESH_SECONDS = 1.0  # how stale this process's copy of the blocked addresses may be


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


def throttle_fail(limit: Limit, client: str) -> None:
    """Count one failure (a 401); at the burst, publish the address as blocked for the rest
    of the window, to Redis and to this process's copy."""
    now = time.time()
    key, _left = _window(limit, client, now)
    try:
        count = _incr(key, limit.window_seconds + 1)
        if count >= limit.burst:
            _blocked.add(limit, client, now)
    except Exception as exc:  # fail open (module docstring)
        _cache_failed(exc)


def throttle_refused(limit: Limit, client: str) -> int | None:
    """The seconds to wait if `client` is in the window's blocked set (as of at most
    BLOCKED_REFRESH_SECONDS ago), else None. No Redis round trip, but one a second."""
    now = time.time()
    if client not in _blocked.addresses(limit, now):
        return None
    return _window(limit, client, now)[1]


class _BlockedCopy:
    """This process's copy of the current window's blocked addresses, per limit.

    The set in Redis has one key per limit and window (it expires with the window), so the
    copy only has to know which window it holds. A Redis error leaves the copy empty until
    the next refresh: the throttle fails open, and a Redis outage costs each process one
    failed read a second, not one per request."""

    def __init__(self) -> None:
        # (scope, window seconds) -> (window number, addresses, monotonic time of the read)
        self._copies: dict[tuple[str, int], tuple[int, frozenset[str], float]] = {}

    @staticmethod
    def _key(limit: Limit, number: int) -> str:
        return cache.make_key(f"throttle:blocked:{limit.scope}:{number}")

    def addresses(self, limit: Limit, now: float) -> frozenset[str]:
        number = int(now // limit.window_seconds)
        copy = self._copies.get((limit.scope, limit.window_seconds))
        if copy is not None and copy[0] == number and time.monotonic() - copy[2] < BLOCKED_REFRESH_SECONDS:
            return copy[1]
        addresses: frozenset[str] = frozenset()
        try:
            members = redis_client(timeout_seconds=CACHE_TIMEOUT_SECONDS).smembers(self._key(limit, number))
            addresses = frozenset(m.decode() if isinstance(m, bytes) else m for m in members)
        except Exception as exc:  # fail open (module docstring)
            _cache_failed(exc)
        self._copies[(limit.scope, limit.window_seconds)] = (number, addresses, time.monotonic())
        return addresses

    def add(self, limit: Limit, client: str, now: float) -> None:
        number = int(now // limit.window_seconds)
        key = self._key(limit, number)
        pipe = redis_client(timeout_seconds=CACHE_TIMEOUT_SECONDS).pipeline(transaction=False)
        pipe.sadd(key, client)
        pipe.expire(key, limit.window_seconds + 1)
        pipe.execute()
        copy = self._copies.get((limit.scope, limit.window_seconds))
        if copy is not None and copy[0] == number:
            self._copies[(limit.scope, limit.window_seconds)] = (number, copy[1] | {client}, copy[2])


_blocked = _BlockedCopy()


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
        wait = throttle_refused(unauthorized_limit(), client)
        if wait is None and request.path == REGISTER_PATH and request.method == "POST":
            wait = throttle_hit(register_limit(), client)
        if wait is not None:
            return too_many_requests(wait)
        response = self.get_response(request)
        if response.status_code == 401:
            throttle_fail(unauthorized_limit(), client)
        return response
