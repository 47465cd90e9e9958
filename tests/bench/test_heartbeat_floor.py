"""The heartbeat floor app does the project's work, no less: same row changes, same answer."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection

from bench import floor_app
from controlplane.agents.models import Agent, AgentLease
from controlplane.agents.services import agent_create
from controlplane.tenants.models import Tenant

pytestmark = [pytest.mark.bench, pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


def _post(app: Callable[..., Any], key: str) -> tuple[str, dict[str, Any]]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": floor_app.HEARTBEAT_PATH,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.input": io.BytesIO(b""),
        "CONTENT_LENGTH": "0",
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
    }
    status: list[str] = []
    response = app(environ, lambda line, headers: status.append(line))
    try:
        body = b"".join(response)
    finally:
        getattr(response, "close", lambda: None)()
    return status[0], json.loads(body)


def _state(agent_id: int) -> tuple[Any, ...]:
    agent = Agent.objects.get(pk=agent_id)
    lease = (
        AgentLease.objects.filter(agent_id=agent_id).values_list("version", "lease_duration_seconds").first()
    )
    return agent.health, agent.version, agent.last_seen_at is not None, lease


@pytest.fixture
def floor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    cfg = connection.settings_dict
    host, port = cfg["HOST"] or "127.0.0.1", cfg["PORT"] or 5432
    url = f"postgresql://{cfg['USER'] or 'postgres'}@{host}:{port}/{cfg['NAME']}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setattr(floor_app, "_connection", None)
    yield floor_app.application
    if floor_app._connection is not None:
        floor_app._connection.close()


@pytest.mark.parametrize("platform", [True, False], ids=["platform-agent", "tenant-agent"])
def test_the_floor_heartbeat_changes_what_the_project_changes(
    floor: Callable[..., Any], platform: bool
) -> None:
    tenant = None if platform else Tenant.objects.create(name="floor")
    ours = agent_create(name="project", tenant=tenant, actor="user:test")
    theirs = agent_create(name="floor", tenant=tenant, actor="user:test")
    project = WSGIHandler()
    for beat in range(2):  # the first creates a platform agent's lease, the second renews it
        project_status, project_body = _post(project, ours.api_key)
        floor_status, floor_body = _post(floor, theirs.api_key)
        assert project_status == floor_status == "200 OK", beat
        assert set(project_body) == set(floor_body)
        assert (
            (project_body["lease_expires_at"] is None)
            == (floor_body["lease_expires_at"] is None)
            == (not platform)
        )
        assert _state(ours.agent.pk) == _state(theirs.agent.pk)
    Agent.objects.filter(pk=theirs.agent.pk).update(status="revoked")
    assert _post(floor, theirs.api_key)[0].startswith("401")
