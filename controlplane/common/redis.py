"""The one place Redis clients are built (locks, readiness checks, demo)."""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

# Short timeouts: a Redis outage must turn into a fast `lock_unavailable` skip or a
# "redis: down" readiness entry, never a worker hung on a socket.
REDIS_SOCKET_TIMEOUT_SECONDS = 2.0
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0


@cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
        retry_on_timeout=False,
    )


def redis_client() -> redis.Redis:
    """A pooled client for settings.REDIS_URL (read at call time, so tests can point it elsewhere)."""
    return _client_for(settings.REDIS_URL)
