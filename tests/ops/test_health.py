"""/healthz and /readyz: what each failure looks like to a load balancer and to a human."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test import Client

from controlplane.common.db import db_now
from reconcilers.models import GlobalPause, ReconcilerConfig, ReconcileRun, RunOutcome
from reconcilers.registry import controller_get

pytestmark = pytest.mark.django_db


def _closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound then released, so it is free right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _configure(name: str, **fields: Any) -> ReconcilerConfig:
    controller = controller_get(name)
    defaults = {
        "enabled": True,
        "dry_run": False,
        "interval_seconds": controller.default_interval_seconds,
        "run_timeout_seconds": min(controller.default_interval_seconds, 3600),
    }
    defaults.update(fields)
    config, _ = ReconcilerConfig.objects.update_or_create(controller=name, defaults=defaults)
    return config


def _succeeded(name: str, seconds_ago: float) -> None:
    started = db_now() - timedelta(seconds=seconds_ago)
    ReconcileRun.objects.create(
        controller=name, started_at=started, finished_at=started, outcome=RunOutcome.SUCCESS
    )


@pytest.fixture
def all_fresh(controller_names: list[str]) -> list[str]:
    """Every controller configured with defaults and a success one second ago."""
    for name in controller_names:
        _configure(name)
        _succeeded(name, 1)
    return controller_names


def _readyz(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


@pytest.mark.django_db(False)
def test_healthz_answers_without_touching_the_database(client: Client) -> None:
    # No db mark: pytest-django raises on any database access, so this proves there is none.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_all_ok(client: Client, all_fresh: list[str]) -> None:
    status, body = _readyz(client)
    assert status == 200
    assert body["status"] == "ok"
    assert body["database"] == {"status": "ok"}
    assert body["redis"] == {"status": "ok"}
    assert body["paused"] is False
    assert set(body["controllers"]) == set(all_fresh)
    assert {c["status"] for c in body["controllers"].values()} == {"ok"}


def test_readyz_database_down_is_503(
    client: Client, all_fresh: list[str], monkeypatch: Any, caplog: Any
) -> None:
    driver_text = 'connection to server at "db.internal" (10.1.2.3), port 5432 failed: password for "app"'

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError(driver_text)

    monkeypatch.setattr(connection, "cursor", refuse)
    status, body = _readyz(client)
    assert status == 503
    assert body["status"] == "down"
    # An anonymous client learns the status only; the driver's text is in the log.
    assert body["database"] == {"status": "down"}
    assert "db.internal" not in json.dumps(body)
    assert body["redis"] == {"status": "ok"}
    assert driver_text in caplog.text


def test_readyz_redis_down_stays_200(client: Client, all_fresh: list[str], settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_loopback_port()}/0"
    status, body = _readyz(client)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["database"] == {"status": "ok"}
    assert body["redis"] == {"status": "down"}
    assert {c["status"] for c in body["controllers"].values()} == {"ok"}


def test_readyz_stale_controller_stays_200(client: Client, all_fresh: list[str]) -> None:
    name = all_fresh[0]
    ReconcileRun.objects.filter(controller=name).delete()
    interval = ReconcilerConfig.objects.get(controller=name).interval_seconds
    _succeeded(name, 3 * interval + 5)
    # An error after the old success does not count as success.
    ReconcileRun.objects.create(
        controller=name, started_at=db_now(), outcome=RunOutcome.ERROR, reason="exception"
    )
    status, body = _readyz(client)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["controllers"][name]["status"] == "stale"
    assert body["controllers"][name]["last_success_at"] is not None
    for other in all_fresh[1:]:
        assert body["controllers"][other]["status"] == "ok"


def test_readyz_just_under_three_intervals_is_not_stale(client: Client, all_fresh: list[str]) -> None:
    name = all_fresh[0]
    ReconcileRun.objects.filter(controller=name).delete()
    interval = ReconcilerConfig.objects.get(controller=name).interval_seconds
    _succeeded(name, 3 * interval - 5)
    assert _readyz(client)[1]["controllers"][name]["status"] == "ok"


def test_readyz_never_succeeded_and_no_config_row_is_stale(
    client: Client, controller_names: list[str]
) -> None:
    name = controller_names[0]
    ReconcilerConfig.objects.filter(controller=name).delete()
    status, body = _readyz(client)
    assert status == 200
    entry = body["controllers"][name]
    assert entry["status"] == "stale"
    # Defaults stand in for the missing row.
    assert entry["interval_seconds"] == controller_get(name).default_interval_seconds
    assert entry["enabled"] is True


def test_readyz_fresh_config_without_runs_is_not_stale(client: Client, controller_names: list[str]) -> None:
    name = controller_names[0]
    _configure(name)
    assert _readyz(client)[1]["controllers"][name]["status"] == "ok"


def test_readyz_disabled_and_dry_run(client: Client, all_fresh: list[str]) -> None:
    first = all_fresh[0]
    _configure(first, enabled=False)
    status, body = _readyz(client)
    assert status == 200
    assert body["controllers"][first]["status"] == "disabled"
    _configure(first, enabled=True, dry_run=True)
    body = _readyz(client)[1]
    assert body["controllers"][first]["status"] == "dry_run"
    assert body["controllers"][first]["dry_run"] is True
    assert body["status"] == "ok"


def test_readyz_paused_by_admin_switch(client: Client, all_fresh: list[str]) -> None:
    GlobalPause.objects.update_or_create(pk=1, defaults={"paused": True})
    status, body = _readyz(client)
    assert status == 200
    assert body["paused"] is True
    assert {c["status"] for c in body["controllers"].values()} == {"paused"}


def test_readyz_paused_by_setting(client: Client, all_fresh: list[str], settings: Any) -> None:
    settings.RECONCILERS_PAUSED = True
    body = _readyz(client)[1]
    assert body["paused"] is True
    assert {c["status"] for c in body["controllers"].values()} == {"paused"}


def test_readyz_exempt_from_ssl_redirect(client: Client, all_fresh: list[str], settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/admin/").status_code == 301
