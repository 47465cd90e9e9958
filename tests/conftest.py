"""Shared fixtures: real database (PostgreSQL or SQLite, per DATABASE_URL) and real Redis."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings

from controlplane.agents.models import Agent, AgentHealth
from controlplane.commands.models import Command
from controlplane.common.db import db_now
from controlplane.common.secrets import issue_secret
from controlplane.tenants.models import Plan, Tenant
from tests.pgbouncer import PgBouncer, pgbouncer_start

_sequence = itertools.count(1)

# Each test run uses its own Redis database and key prefix on the shared server, and
# deletes only its own keys: never FLUSHDB a server the machine shares.
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "9"))


def pytest_configure(config: pytest.Config) -> None:
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    settings.REDIS_URL = f"{base}/{TEST_REDIS_DB}"
    settings.RECONCILERS_LOCK_PREFIX = f"cptest:{os.getpid()}:lock:"
    # The Django cache lives in the same Redis database: its own prefix per run, deleted at the end.
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"cptest:{os.getpid()}:cache"}}
    # Every request of the test client comes from 127.0.0.1: the API limits would trip across
    # tests. tests/security sets them low where they are the subject.
    settings.API_REGISTER_BURST = settings.API_UNAUTHORIZED_BURST = 1_000_000


def pytest_unconfigure(config: pytest.Config) -> None:
    from django.core.cache import cache

    with contextlib.suppress(redis.RedisError):
        cache.clear()  # only this run's prefix (controlplane.common.cache.RedisCache.clear)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    keys = list(client.scan_iter(match=f"{settings.RECONCILERS_LOCK_PREFIX}*"))
    if keys:
        client.delete(*keys)
    client.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres_only" in item.keywords and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            item.add_marker(
                pytest.mark.skip(reason="PostgreSQL-only feature (the SQLite run covers the rest)")
            )


@pytest.fixture(scope="session")
def pgbouncer(django_db_setup: Any) -> Iterator[PgBouncer]:
    """A real pgbouncer (transaction pooling, DISCARD ALL after every transaction) in front of
    the test database's server, for the whole run. It stops before the test database is
    dropped (directly, like its creation), so no pooled connection holds it open.
    TEST_PGBOUNCER_PORT picks its port (default: a free one)."""
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("PgBouncer sits in front of PostgreSQL")
    bouncer = pgbouncer_start(
        pg_host=db["HOST"] or "127.0.0.1",
        pg_port=int(db["PORT"] or 5432),
        pg_user=db["USER"] or "postgres",
        port=int(os.environ.get("TEST_PGBOUNCER_PORT", "0")),
    )
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def through_pgbouncer(request: pytest.FixtureRequest) -> Iterator[PgBouncer | None]:
    """Route the module's database connections (every thread's) through `pgbouncer`; on SQLite,
    nothing. Module-scoped, so the switch happens before any test opens its transaction.
    DATABASE_POOL is "pgbouncer", as a deployment behind PgBouncer must declare (so no
    statement is prepared and the runs' timeouts are SET LOCAL), but DISABLE_SERVER_SIDE_CURSORS
    stays as configured (off), so a walk that needed a cursor across commits fails here as it
    did in production."""
    if connection.vendor != "postgresql":
        yield None
        return
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    db = connection.settings_dict  # the same dict as settings.DATABASES["default"]
    direct = db["HOST"], db["PORT"]
    connection.close()
    db["HOST"], db["PORT"] = bouncer.host, str(bouncer.port)
    try:
        with override_settings(DATABASE_POOL="pgbouncer"):
            yield bouncer
    finally:
        connection.close()
        db["HOST"], db["PORT"] = direct


@pytest.fixture
def is_postgres() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture
def now(db: Any) -> Any:
    return db_now()


@pytest.fixture
def make_tenant(db: Any) -> Callable[..., Tenant]:
    def make(plan: str = Plan.FREE, **kwargs: Any) -> Tenant:
        return Tenant.objects.create(
            name=kwargs.pop("name", f"tenant-{next(_sequence)}"), plan=plan, **kwargs
        )

    return make


@pytest.fixture
def make_agent(db: Any, make_tenant: Callable[..., Tenant]) -> Callable[..., Agent]:
    def make(*, platform: bool = True, tenant: Tenant | None = None, **kwargs: Any) -> Agent:
        secret = issue_secret("cpa")
        if not platform and tenant is None:
            tenant = make_tenant()
        kwargs.setdefault("health", AgentHealth.ONLINE)
        return Agent.objects.create(
            name=kwargs.pop("name", f"agent-{next(_sequence)}"),
            tenant=None if platform else tenant,
            is_platform_agent=platform,
            api_key_hash=secret.hash,
            api_key_prefix=secret.prefix,
            **kwargs,
        )

    return make


@pytest.fixture
def make_command(db: Any, make_tenant: Callable[..., Tenant]) -> Callable[..., Command]:
    def make(*, tenant: Tenant | None = None, **kwargs: Any) -> Command:
        kwargs.setdefault("queued_at", db_now() - timedelta(seconds=1))
        kwargs.setdefault("kind", "test")
        kwargs.setdefault("is_platform_job", True)
        return Command.objects.create(tenant=tenant or make_tenant(), **kwargs)

    return make
