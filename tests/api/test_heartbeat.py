"""Heartbeat over HTTP: the server's interval and the lease; one 401 for every auth failure."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.conf import settings
from django.test import Client

from controlplane.agents.models import Agent, AgentHealth, AgentStatus
from tests.api.conftest import KeyedAgent, assert_error, db_snapshot, post_json

HEARTBEAT = "/api/v1/agents/heartbeat"


@pytest.mark.django_db
def test_heartbeat_marks_online_and_returns_interval_and_lease(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent]
) -> None:
    keyed = make_keyed_agent(online=False)
    response = client.post(HEARTBEAT, **keyed.auth)
    assert response.status_code == 200
    body = response.json()
    keyed.agent.refresh_from_db()
    assert keyed.agent.health == AgentHealth.ONLINE
    assert body["heartbeat_interval_seconds"] == settings.AGENT_HEARTBEAT_INTERVAL_SECONDS
    assert body["lease_expires_at"] is not None
    assert keyed.agent.last_seen_at is not None


@pytest.mark.django_db
def test_tenant_agent_heartbeat_has_null_lease(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_tenant: Callable[..., object]
) -> None:
    keyed = make_keyed_agent(tenant=make_tenant())
    response = client.post(HEARTBEAT, **keyed.auth)
    assert response.status_code == 200
    assert response.json()["lease_expires_at"] is None


@pytest.mark.django_db
def test_every_auth_failure_gets_the_identical_401(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent]
) -> None:
    keyed = make_keyed_agent()
    disabled = make_keyed_agent(name="disabled")
    Agent.objects.filter(pk=disabled.agent.pk).update(status=AgentStatus.DISABLED)
    revoked = make_keyed_agent(name="revoked")
    Agent.objects.filter(pk=revoked.agent.pk).update(status=AgentStatus.REVOKED)
    headers = {
        "missing": {},
        "not_bearer": {"HTTP_AUTHORIZATION": f"Token {keyed.key}"},
        "malformed": {"HTTP_AUTHORIZATION": "Bearer nonsense"},
        "wrong_secret": {"HTTP_AUTHORIZATION": f"Bearer {keyed.key[:-3]}xyz"},
        "disabled": disabled.auth,
        "revoked": revoked.auth,
        "huge": {"HTTP_AUTHORIZATION": "Bearer " + "a" * 5000},
    }
    bodies = set()
    for name, header in headers.items():
        before = db_snapshot()
        for path in (HEARTBEAT, "/api/v1/jobs/claim", "/api/v1/jobs/1/start"):
            response = post_json(client, path, {"attempt": 1}, **header)
            assert_error(response, 401, "unauthorized")
            bodies.add(response.content)
        assert db_snapshot() == before, name
    assert len(bodies) == 1


@pytest.mark.django_db
def test_malformed_json_body_is_refused(client: Client, make_keyed_agent: Callable[..., KeyedAgent]) -> None:
    keyed = make_keyed_agent()
    before = db_snapshot()
    for path in (HEARTBEAT, "/api/v1/jobs/claim"):
        assert_error(post_json(client, path, raw="{nope", **keyed.auth), 400, "malformed_json")
    assert db_snapshot() == before
