"""The lock backends against real Redis and the real database."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from reconcilers.runtime.lock import (
    DatabaseLockBackend,
    LockRenewer,
    LockUnavailableError,
    RedisLockBackend,
    lock_acquire,
)


@pytest.fixture(params=["redis", "database"])
def backend_name(request: pytest.FixtureRequest, settings: Any, redis_client: redis.Redis, db: Any) -> str:
    settings.RECONCILERS_LOCK_BACKEND = request.param
    return str(request.param)


def test_acquire_is_exclusive_and_never_blocks(backend_name: str) -> None:
    first = lock_acquire("test-lock", ttl_seconds=5)
    assert first is not None
    started = time.monotonic()
    assert lock_acquire("test-lock", ttl_seconds=5) is None
    assert time.monotonic() - started < 0.5
    assert first.release()
    again = lock_acquire("test-lock", ttl_seconds=5)
    assert again is not None
    again.release()


def test_release_and_renew_compare_the_token(backend_name: str) -> None:
    held = lock_acquire("test-lock", ttl_seconds=5)
    assert held is not None
    assert not held.backend.release(held.key, "not-the-token")
    assert not held.backend.renew(held.key, "not-the-token", 5)
    assert lock_acquire("test-lock", ttl_seconds=5) is None  # still held
    assert held.renew()
    assert held.release()
    assert not held.release()  # second release is a no-op


def test_expired_lock_is_free_and_old_token_cannot_renew(backend_name: str) -> None:
    old = lock_acquire("test-lock", ttl_seconds=0.3)
    assert old is not None
    time.sleep(0.5)
    new = lock_acquire("test-lock", ttl_seconds=5)
    assert new is not None
    assert not old.renew()
    assert not old.release()
    assert lock_acquire("test-lock", ttl_seconds=5) is None  # the new holder still holds it
    new.release()


def test_redis_key_uses_prefix_and_ttl(redis_client: redis.Redis, settings: Any) -> None:
    settings.RECONCILERS_LOCK_BACKEND = "redis"
    held = lock_acquire("test-lock", ttl_seconds=7)
    assert held is not None
    key = f"{settings.RECONCILERS_LOCK_PREFIX}test-lock"
    assert redis_client.get(key) == held.token.encode()
    assert 6000 < redis_client.pttl(key) <= 7000
    held.release()
    assert redis_client.get(key) is None


def test_redis_down_raises_lock_unavailable() -> None:
    no_retry = Retry(NoBackoff(), 0)
    backend = RedisLockBackend(redis.Redis(port=16381, socket_connect_timeout=0.5, retry=no_retry))
    with pytest.raises(LockUnavailableError):
        backend.acquire("k", "t", 1)
    with pytest.raises(LockUnavailableError):
        backend.renew("k", "t", 1)


@pytest.mark.django_db(transaction=True)
def test_renewer_keeps_the_lock_past_its_ttl(backend_name: str) -> None:
    held = lock_acquire("test-lock", ttl_seconds=0.6)
    assert held is not None
    lost = threading.Event()
    renewer = LockRenewer(held, lost).start()
    try:
        time.sleep(1.5)
        assert lock_acquire("test-lock", ttl_seconds=5) is None
        assert not lost.is_set()
    finally:
        renewer.stop()
        held.release()


@pytest.mark.django_db(transaction=True)
def test_renewer_sets_lost_when_the_lock_is_taken_over(backend_name: str) -> None:
    held = lock_acquire("test-lock", ttl_seconds=0.6)
    assert held is not None
    # A foreign token takes the key over (as after an expiry and a new grant).
    if backend_name == "redis":
        RedisLockBackend().client.set(held.key, "intruder", px=5000)
    else:
        DatabaseLockBackend().release(held.key, held.token)
        assert DatabaseLockBackend().acquire(held.key, "intruder", 5)
    lost = threading.Event()
    renewer = LockRenewer(held, lost).start()
    try:
        assert lost.wait(timeout=2)
    finally:
        renewer.stop()
        held.backend.release(held.key, "intruder")


def test_database_key_ignores_the_redis_prefix(settings: Any, db: Any) -> None:
    settings.RECONCILERS_LOCK_BACKEND = "database"
    held = lock_acquire("test-lock", ttl_seconds=5)
    assert held is not None
    assert held.key == "test-lock"
    held.release()
    assert settings.RECONCILERS_LOCK_PREFIX  # untouched
