"""The run-once-across-the-cluster lock (design.md §4.4): backends (Redis, database), renewal.

Layered after Sentry's locks: `lock_backend()` picks a backend from settings, a backend
only knows acquire/renew/release of a key with a token, and `LockRenewer` keeps a held
lock alive while a run lasts. Acquire never blocks: a busy lock is `None` (the caller
records a `locked` skip); a backend that cannot answer raises `LockUnavailableError`
(the caller records `lock_unavailable` and never runs unlocked).
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q

from controlplane.common.db import db_now
from controlplane.common.redis import redis_client
from reconcilers.models import ReconcilerState
from reconcilers.runtime.liveness import Progress

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 30.0  # default of settings.RECONCILERS_LOCK_TTL_SECONDS
RENEWALS_PER_TTL = 3  # renew every ttl/3: two renewals may fail before the lock can expire

# Compare-and-set scripts: only the token's owner may extend or delete the key, so a
# holder whose key expired and was re-acquired by someone else can never touch it.
_RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class LockUnavailableError(Exception):
    """The lock backend could not be asked (Redis down, database error): skip, never run unlocked."""


class LockBackend(Protocol):
    def acquire(self, key: str, token: str, ttl_seconds: float) -> bool:
        """Take the lock if free. Never blocks: False when someone else holds it."""
        ...

    def renew(self, key: str, token: str, ttl_seconds: float) -> bool:
        """Extend the lock if `token` still holds it; False if it was lost."""
        ...

    def release(self, key: str, token: str) -> bool:
        """Delete the lock if `token` still holds it (compare-and-delete)."""
        ...


class RedisLockBackend:
    """SET key token NX PX ttl; renew and release by compare-and-(pexpire|delete) in Lua."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self._client = client

    @property
    def client(self) -> redis.Redis:
        return self._client or redis_client()

    def acquire(self, key: str, token: str, ttl_seconds: float) -> bool:
        try:
            return bool(self.client.set(key, token, nx=True, px=_millis(ttl_seconds)))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LockUnavailableError(f"redis unavailable: {exc}") from exc

    def renew(self, key: str, token: str, ttl_seconds: float) -> bool:
        try:
            return bool(self.client.eval(_RENEW_SCRIPT, 1, key, token, _millis(ttl_seconds)))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LockUnavailableError(f"redis unavailable: {exc}") from exc

    def release(self, key: str, token: str) -> bool:
        try:
            return bool(self.client.eval(_RELEASE_SCRIPT, 1, key, token))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LockUnavailableError(f"redis unavailable: {exc}") from exc


class DatabaseLockBackend:
    """A lease on the controller's ReconcilerState row, for a single node without Redis.

    Every operation is one conditional UPDATE in autocommit, compared on the database
    clock, so two processes (or threads) sharing the database exclude each other.
    The key is the controller name (the Redis prefix is irrelevant here).
    """

    def acquire(self, key: str, token: str, ttl_seconds: float) -> bool:
        try:
            ReconcilerState.objects.get_or_create(controller=key)
            now = db_now()
            free = Q(lock_token="") | Q(lock_expires_at__isnull=True) | Q(lock_expires_at__lt=now)
            return bool(
                ReconcilerState.objects.filter(free, controller=key).update(
                    lock_token=token, lock_expires_at=now + timedelta(seconds=ttl_seconds)
                )
            )
        except DatabaseError as exc:
            raise LockUnavailableError(f"database lock unavailable: {exc}") from exc

    def renew(self, key: str, token: str, ttl_seconds: float) -> bool:
        try:
            now = db_now()
            return bool(
                ReconcilerState.objects.filter(
                    controller=key, lock_token=token, lock_expires_at__gte=now
                ).update(lock_expires_at=now + timedelta(seconds=ttl_seconds))
            )
        except DatabaseError as exc:
            raise LockUnavailableError(f"database lock unavailable: {exc}") from exc

    def release(self, key: str, token: str) -> bool:
        try:
            return bool(
                ReconcilerState.objects.filter(controller=key, lock_token=token).update(
                    lock_token="", lock_expires_at=None
                )
            )
        except DatabaseError as exc:
            raise LockUnavailableError(f"database lock unavailable: {exc}") from exc


def lock_backend() -> LockBackend:
    """The backend chosen by settings.RECONCILERS_LOCK_BACKEND ("redis" or "database")."""
    if settings.RECONCILERS_LOCK_BACKEND == "database":
        return DatabaseLockBackend()
    return RedisLockBackend()


def lock_ttl_seconds() -> float:
    return float(getattr(settings, "RECONCILERS_LOCK_TTL_SECONDS", LOCK_TTL_SECONDS))


def lock_key(controller: str) -> str:
    if settings.RECONCILERS_LOCK_BACKEND == "database":
        return controller
    return f"{settings.RECONCILERS_LOCK_PREFIX}{controller}"


@dataclass
class HeldLock:
    """A lock this process holds; release it exactly once (compare-and-delete)."""

    controller: str
    key: str
    token: str
    ttl_seconds: float
    backend: LockBackend

    def renew(self) -> bool:
        return self.backend.renew(self.key, self.token, self.ttl_seconds)

    def release(self) -> bool:
        """Release if still ours. Errors are logged, not raised: the key expires on its own."""
        try:
            released = self.backend.release(self.key, self.token)
        except LockUnavailableError as exc:
            log.warning("%s: lock release failed (it expires after its TTL): %s", self.controller, exc)
            return False
        if not released:
            log.warning("%s: lock was no longer ours at release", self.controller)
        return released


def lock_acquire(controller: str, ttl_seconds: float | None = None) -> HeldLock | None:
    """Try once to take the controller's lock. None when busy; LockUnavailableError when the
    backend cannot answer."""
    ttl = ttl_seconds if ttl_seconds is not None else lock_ttl_seconds()
    backend = lock_backend()
    key = lock_key(controller)
    token = secrets.token_hex(16)
    if not backend.acquire(key, token, ttl):
        log.info("%s: lock busy, another run holds it", controller)
        return None
    return HeldLock(controller=controller, key=key, token=token, ttl_seconds=ttl, backend=backend)


class LockRenewer:
    """Renews a held lock every ttl/3 in a daemon thread until stopped, while the run is alive.

    A failed renewal (lock taken over, backend down) sets `lost`; the run sees it at its
    next checkpoint and stops with `lock_lost`. The fence check is the real guarantee:
    this only makes a run that lost its lock stop early instead of at its next commit.

    With `progress`, a run that has shown no sign of life for longer than its bound (stuck on
    a database socket that a partition black-holed) is no longer renewed: the renewer sets
    `lost` and stops, the key expires within one TTL, and another host takes the controller
    over instead of skipping as `locked` for as long as the partition lasts (design.md §4.4).
    """

    def __init__(self, held: HeldLock, lost: threading.Event, progress: Progress | None = None) -> None:
        self.held = held
        self.lost = lost
        self.progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"lock-renewer-{held.controller}", daemon=True
        )

    def start(self) -> LockRenewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.held.ttl_seconds)

    def _loop(self) -> None:
        period = self.held.ttl_seconds / RENEWALS_PER_TTL
        try:
            while not self._stop.wait(period):
                if self.progress is not None and self.progress.stalled():
                    log.error(
                        "%s: no database round trip or checkpoint for %.1fs (bound %.1fs): lock renewal "
                        "stopped, the lock expires within %gs and another host may take over",
                        self.held.controller,
                        self.progress.stalled_seconds(),
                        self.progress.bound_seconds,
                        self.held.ttl_seconds,
                    )
                    self.lost.set()
                    return
                try:
                    ok = self.held.renew()
                except LockUnavailableError as exc:
                    log.error("%s: lock renewal failed: %s", self.held.controller, exc)
                    ok = False
                if not ok:
                    log.error("%s: lock lost, the run stops at its next checkpoint", self.held.controller)
                    self.lost.set()
                    return
        finally:
            # The database backend renews through this thread's own connection.
            connection.close()


def _millis(seconds: float) -> int:
    return max(1, int(seconds * 1000))
