"""Fixtures for the agent API tests: agents with known keys, a JSON client, a database snapshot."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from controlplane.agents.models import Agent, AgentLease
from controlplane.agents.services import agent_create, agent_heartbeat
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command
from controlplane.tenants.models import Tenant
from controlplane.tokens.models import BootstrapToken


@dataclass
class KeyedAgent:
    agent: Agent
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key}"}


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def make_keyed_agent(db: Any) -> Callable[..., KeyedAgent]:
    """An agent created through the service (so its key works), online unless said otherwise."""

    def make(*, tenant: Tenant | None = None, online: bool = True, **kwargs: Any) -> KeyedAgent:
        created = agent_create(name=kwargs.pop("name", "agent"), tenant=tenant, actor="user:test", **kwargs)
        if online:
            agent_heartbeat(created.agent.pk)
        created.agent.refresh_from_db()
        return KeyedAgent(agent=created.agent, key=created.api_key)

    return make


def post_json(client: Client, path: str, body: Any = None, *, raw: str | None = None, **extra: Any) -> Any:
    data = raw if raw is not None else ("" if body is None else json.dumps(body))
    return client.post(path, data=data, content_type="application/json", **extra)


def db_snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables the API writes, to prove a refused request changed nothing."""
    return {
        "commands": list(Command.objects.order_by("pk").values_list()),
        "agents": list(Agent.objects.order_by("pk").values_list()),
        "leases": list(AgentLease.objects.order_by("pk").values_list()),
        "tokens": list(BootstrapToken.objects.order_by("pk").values_list()),
        "audit": list(AuditLog.objects.order_by("pk").values_list()),
    }


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert isinstance(body["detail"], str)
    if code is not None:
        assert body["error"] == code
    return body
