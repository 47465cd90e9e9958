"""/readyz follows the deployment: the lock backend configured, the broker pinged within 1 s."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from controlplane import health
from controlplane.common.db import db_now
from reconcilers.models import ReconcilerConfig, ReconcileRun, RunOutcome

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_broker_answers() -> Iterator[None]:
    health._broker_answers.clear()
    yield
    health._broker_answers.clear()


@pytest.fixture
def all_fresh(controller_names: list[str]) -> list[str]:
    """Every controller configured and successful a second ago: only dependencies can degrade."""
    for name in controller_names:
        ReconcilerConfig.objects.update_or_create(controller=name, defaults={"enabled": True})
        started = db_now() - timedelta(seconds=1)
        ReconcileRun.objects.create(
            controller=name, started_at=started, finished_at=started, outcome=RunOutcome.SUCCESS
        )
    return controller_names


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _readyz(client: Client) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = client.get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


def test_database_lock_backend_without_redis_is_ready_and_not_degraded(
    client: Client, all_fresh: list[str], settings: Any
) -> None:
    """A single node on the database lock backend (runcontrollers, no Redis, no broker)."""
    settings.RECONCILERS_LOCK_BACKEND = "database"
    nothing = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = nothing

    status, body, _ = _readyz(client)

    assert status == 200
    assert body["status"] == "ok"
    assert body["lock_backend"] == "database"
    assert "redis" not in body  # the locks are in the database, which answered
    assert body["broker"]["status"] == "down"  # reported, for a deployment that has one
    assert {c["status"] for c in body["controllers"].values()} == {"ok"}


def test_broker_down_is_reported_and_stays_200(
    client: Client, all_fresh: list[str], settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"

    with caplog.at_level(logging.WARNING, logger="controlplane.health"):
        status, body, _ = _readyz(client)

    assert status == 200
    assert body["broker"] == {"status": "down"}  # the public body has no driver error text
    assert "Connection refused" in caplog.text  # the log has it
    assert body["redis"] == {"status": "ok"}  # the locks' Redis is another matter
    assert body["status"] == "ok"


def test_broker_up_is_ok(client: Client, all_fresh: list[str]) -> None:
    status, body, _ = _readyz(client)
    assert status == 200
    assert body["broker"] == {"status": "ok"}
    assert body["lock_backend"] == "redis"
    assert body["status"] == "ok"


def test_a_black_holed_broker_costs_a_probe_at_most_a_second_then_is_cached(
    client: Client, all_fresh: list[str], settings: Any, black_hole: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{black_hole}/0"

    status, body, first = _readyz(client)
    assert status == 200
    assert body["broker"]["status"] == "down"
    assert health.BROKER_TIMEOUT_SECONDS <= first < health.BROKER_TIMEOUT_SECONDS + 1.0

    # Within the cache window the answer is reused: no second wait on the broker.
    status, again, second = _readyz(client)
    assert again["broker"] == body["broker"]
    assert second < health.BROKER_TIMEOUT_SECONDS / 2

    # Once the window has passed, the broker is asked again (now a working one).
    monkeypatch.setattr(health, "BROKER_CACHE_SECONDS", 0.0)
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    assert _readyz(client)[1]["broker"] == {"status": "ok"}
