"""Registration with a bootstrap token: one 401 for every token failure, uses counted atomically."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client

from controlplane.agents.models import Agent
from controlplane.audit.models import AuditLog
from controlplane.common.db import db_now
from controlplane.tokens.models import BootstrapToken, TokenStatus
from controlplane.tokens.registration import TokenRejectedError, agent_register
from controlplane.tokens.services import token_issue, token_revoke
from tests.api.conftest import assert_error, db_snapshot, post_json

REGISTER = "/api/v1/agents/register"


def _issue(max_uses: int = 1, ttl: timedelta = timedelta(hours=1)) -> tuple[BootstrapToken, str]:
    issued = token_issue(description="test", ttl=ttl, max_uses=max_uses, actor="user:test")
    return issued.token, issued.raw


def _body(token: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap_token": token, "name": "edge-1", "capabilities": ["docker"], **extra}


@pytest.mark.django_db
def test_register_creates_platform_agent_and_counts_the_use(client: Client) -> None:
    token, raw = _issue(max_uses=2)
    response = post_json(client, REGISTER, _body(raw))
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"agent_id", "api_key"}
    agent = Agent.objects.get(pk=body["agent_id"])
    assert agent.is_platform_agent
    assert agent.tenant_id is None
    assert (agent.name, agent.capabilities) == ("edge-1", ["docker"])
    assert body["api_key"] not in (agent.api_key_hash, agent.api_key_prefix)
    token.refresh_from_db()
    assert token.current_uses == 1
    audit = AuditLog.objects.get(action="agent.created", resource_id=str(agent.pk))
    assert audit.details["bootstrap_id"] == token.pk
    assert raw not in str(audit.details)
    # The key works at once.
    heartbeat = client.post("/api/v1/agents/heartbeat", HTTP_AUTHORIZATION=f"Bearer {body['api_key']}")
    assert heartbeat.status_code == 200


def _expired() -> str:
    token, raw = _issue()
    BootstrapToken.objects.filter(pk=token.pk).update(expires_at=db_now() - timedelta(seconds=1))
    return raw


def _exhausted() -> str:
    token, raw = _issue(max_uses=3)
    BootstrapToken.objects.filter(pk=token.pk).update(current_uses=F("max_uses"))
    return raw


def _revoked() -> str:
    token, raw = _issue()
    token_revoke(token.pk, actor="user:test")
    return raw


def _status_expired_but_time_left() -> str:
    token, raw = _issue()
    BootstrapToken.objects.filter(pk=token.pk).update(status=TokenStatus.EXPIRED)
    return raw


def _unknown() -> str:
    _, raw = _issue()
    return raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")  # same prefix, wrong secret


TOKEN_FAILURES = {
    "unknown": _unknown,
    "unknown_prefix": lambda: "cpb_00000000_" + "x" * 43,
    "malformed": lambda: "not-a-token",
    "expired": _expired,
    "status_expired": _status_expired_but_time_left,
    "exhausted": _exhausted,
    "revoked": _revoked,
}


@pytest.mark.django_db
def test_every_token_failure_gets_the_identical_401(client: Client) -> None:
    bodies = set()
    for name, make in TOKEN_FAILURES.items():
        raw = make()
        before = db_snapshot()
        response = post_json(client, REGISTER, _body(raw))
        assert_error(response, 401, "unauthorized")
        bodies.add(response.content)
        assert db_snapshot() == before, name
    assert len(bodies) == 1


BAD_BODIES: dict[str, Any] = {
    "not_json": "{bootstrap_token:",
    "empty": "",
    "array": "[]",
    "missing_name": {"bootstrap_token": "cpb_12345678_abc"},
    "missing_token": {"name": "a"},
    "name_wrong_type": {"bootstrap_token": "cpb_12345678_abc", "name": 5},
    "capabilities_wrong_type": {"bootstrap_token": "cpb_12345678_abc", "name": "a", "capabilities": "x"},
    "capability_wrong_type": {"bootstrap_token": "cpb_12345678_abc", "name": "a", "capabilities": [1]},
    "empty_name": {"bootstrap_token": "cpb_12345678_abc", "name": ""},
    "nul_in_name": {"bootstrap_token": "cpb_12345678_abc", "name": "a\x00b"},
    "unknown_field": {"bootstrap_token": "cpb_12345678_abc", "name": "a", "tenant": 1},
    "too_long_name": {"bootstrap_token": "cpb_12345678_abc", "name": "a" * 201},
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_register_bodies_are_4xx_json_and_change_nothing(client: Client, case: str) -> None:
    _, raw = _issue()
    bad = BAD_BODIES[case]
    if isinstance(bad, dict) and "bootstrap_token" in bad:
        bad = {**bad, "bootstrap_token": raw}  # a valid token: only the body is wrong
    before = db_snapshot()
    response = (
        post_json(client, REGISTER, raw=bad) if isinstance(bad, str) else post_json(client, REGISTER, bad)
    )
    assert_error(response, 400 if case == "not_json" else 422)
    assert db_snapshot() == before


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_never_exceed_max_uses() -> None:
    token, raw = _issue(max_uses=5)
    threads_count = 24
    barrier = threading.Barrier(threads_count)
    outcomes: list[str] = []
    lock = threading.Lock()

    def register(i: int) -> None:
        try:
            barrier.wait()
            agent_register(bootstrap_token=raw, name=f"racer-{i}", capabilities=[])
            result = "ok"
        except TokenRejectedError:
            result = "rejected"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    token.refresh_from_db()
    assert outcomes.count("ok") == 5
    assert outcomes.count("rejected") == threads_count - 5
    assert token.current_uses == 5
    assert Agent.objects.filter(name__startswith="racer-").count() == 5
