"""The Django cache backend: Django's RedisCache with its client taken from the one factory.

So the cache follows REDIS_URL whatever its form (plain, TLS or Sentinel, design.md §10.2)
and fails fast: every operation gives up after CACHE_TIMEOUT_SECONDS and raises
redis.ConnectionError or redis.TimeoutError. Callers that must not depend on Redis (request
throttles) catch those and fail open.
"""

from __future__ import annotations

from typing import Any

import redis
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from django.core.exceptions import ImproperlyConfigured

from controlplane.common.redis import redis_client

# Shorter than the locks' 2 s: a cache lookup sits in a web request, and a throttle that
# cannot reach Redis should let the request through quickly rather than hold it.
CACHE_TIMEOUT_SECONDS = 0.5
CLEAR_BATCH_KEYS = 500


class FactoryRedisCacheClient(RedisCacheClient):
    """Django's cache client with the connection coming from `redis_client()`."""

    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        return redis_client(timeout_seconds=CACHE_TIMEOUT_SECONDS)


class RedisCache(DjangoRedisCache):
    """`LOCATION` is ignored (the factory reads REDIS_URL); `KEY_PREFIX` is required, because
    the cache shares its Redis database with the locks and maybe the broker."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server or "", params)
        if not self.key_prefix:
            raise ImproperlyConfigured("CACHES: the Redis cache needs a KEY_PREFIX (it shares the database)")
        self._class = FactoryRedisCacheClient

    def clear(self) -> None:
        """Delete this cache's keys only. Django's RedisCache would FLUSHDB, taking the
        reconciler locks and any broker queues in the same database with it."""
        client = redis_client(timeout_seconds=CACHE_TIMEOUT_SECONDS)
        pattern = _glob_escape(self.key_prefix) + ":*"
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=CLEAR_BATCH_KEYS):
            batch.append(key)
            if len(batch) >= CLEAR_BATCH_KEYS:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
