"""What one agent request costs the database, and the key cache that must not outlive a revocation.

Statements are counted with Django's query capture on a cold authentication cache: the
figure covers authentication too (design.md §9).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from controlplane.agents.models import Agent, AgentLease, AgentStatus
from controlplane.agents.services import agent_heartbeat, agent_revoke, agent_set_status
from controlplane.api.auth import agent_authenticate, auth_cache_clear
from controlplane.commands.models import Command, CommandStatus
from controlplane.common import db as common_db
from controlplane.tenants.models import Tenant
from tests.api.conftest import KeyedAgent, assert_error, post_json

HEARTBEAT = "/api/v1/agents/heartbeat"
CLAIM = "/api/v1/jobs/claim"
MAX_HEARTBEAT_STATEMENTS = 3  # the bound, authentication included


def _conninfo() -> str:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


@pytest.fixture(autouse=True)
def cold_auth_cache() -> Iterator[None]:
    auth_cache_clear()
    yield
    auth_cache_clear()


def _statements(client: Client, path: str, keyed: KeyedAgent, body: object = None) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = post_json(client, path, body, **keyed.auth)
    assert response.status_code in (200, 204), response.content
    # The test's own transaction turns an atomic block into SAVEPOINTs; in production it is
    # a BEGIN and a COMMIT, which the capture does not see either way.
    sql = [query["sql"] for query in captured.captured_queries]
    return response.status_code, [s for s in sql if "SAVEPOINT" not in s]


@pytest.mark.postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize("platform", [True, False], ids=["platform-agent", "tenant-agent"])
def test_heartbeat_statements_on_a_cold_auth_cache(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_tenant: Callable[..., Tenant],
    platform: bool,
) -> None:
    keyed = make_keyed_agent(tenant=None if platform else make_tenant(), online=False)
    _status, cold = _statements(client, HEARTBEAT, keyed)
    # One for the key, one for the heartbeat (agent row and lease together).
    assert len(cold) <= MAX_HEARTBEAT_STATEMENTS, cold
    assert len(cold) == 2, cold
    _status, warm = _statements(client, HEARTBEAT, keyed)
    assert len(warm) == 1, warm  # the key check came from this process's cache
    keyed.agent.refresh_from_db()
    assert keyed.agent.version == 3
    if platform:
        lease = AgentLease.objects.get(agent=keyed.agent)
        assert (lease.version, lease.renew_time) == (2, keyed.agent.last_seen_at)
    else:
        assert not AgentLease.objects.exists()


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)  # so the test may open a fresh connection
@pytest.mark.parametrize("pool", ["none", "pgbouncer"])
def test_the_key_lookup_and_the_heartbeat_are_prepared_statements_on_a_direct_connection(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], settings: Any, pool: str
) -> None:
    settings.DATABASE_POOL = pool
    connection.close()  # a fresh connection: nothing prepared on it yet
    keyed = make_keyed_agent()
    for _ in range(3):
        auth_cache_clear()
        _status, sql = _statements(client, HEARTBEAT, keyed)
        assert len(sql) == 2, sql
        assert all(sql), sql  # the query log still shows each statement's text
    prepared = _prepared_statements()
    if pool == "pgbouncer":
        # Transaction pooling may run the next statement on another server connection.
        assert prepared == []
    else:
        # Parsed and planned once per connection, however many heartbeats follow.
        assert len(prepared) == 2, prepared
        assert any("api_key_prefix" in text for text in prepared), prepared
        assert any("WITH beat AS" in text for text in prepared), prepared


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)  # autocommit, as in a request
def test_a_prepared_statement_that_vanished_runs_again_unprepared_and_preparing_stops(
    make_keyed_agent: Callable[..., KeyedAgent], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Behind a pooler nobody declared (PgBouncer without DATABASE_POOL=pgbouncer), the next
    transaction may run on a server connection where the prepared statement does not exist."""
    monkeypatch.setattr(common_db, "_prepared_statements_vanished", False)
    keyed = make_keyed_agent()
    assert agent_authenticate(keyed.key) is not None
    agent_heartbeat(keyed.agent.pk)
    assert len(_prepared_statements()) == 2  # the key lookup and the heartbeat
    # What the pooler's DISCARD ALL does between two transactions, unseen by psycopg.
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")
    with caplog.at_level(logging.ERROR, logger="controlplane.common.db"):
        result = agent_heartbeat(keyed.agent.pk)  # the heartbeat is not lost
    assert result.version == keyed.agent.version + 2
    assert "DATABASE_POOL=pgbouncer" in caplog.text
    assert agent_authenticate(keyed.key) is not None
    assert _prepared_statements() == []  # nothing prepared since
    caplog.clear()
    agent_heartbeat(keyed.agent.pk)
    assert caplog.text == ""  # said once
    connection.close()  # psycopg still lists the vanished names on this one


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_claim_and_report_statements_on_a_cold_auth_cache(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent()
    make_command()
    status, claim = _statements(client, CLAIM, keyed)
    # The key, the locked agent row, the claiming UPDATE with the held-jobs count (in a
    # transaction: the lock must outlive the count until the UPDATE commits).
    assert (status, len(claim)) == (200, 3), claim
    auth_cache_clear()
    job = Command.objects.get()
    _status, report = _statements(client, f"/api/v1/jobs/{job.pk}/start", keyed, {"attempt": 1})
    assert len(report) == 2, report  # the key, the fenced UPDATE (holder status checked inside)


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["revoked", "disabled"])
def test_a_refused_key_stops_at_the_next_request_although_cached(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_command: Callable[..., Command],
    action: str,
) -> None:
    keyed = make_keyed_agent()
    make_command()
    make_command()
    assert client.post(HEARTBEAT, **keyed.auth).status_code == 200  # the key is now cached
    assert client.post(CLAIM, **keyed.auth).status_code == 200
    job = Command.objects.get(agent=keyed.agent)
    if action == "revoked":
        assert agent_revoke(keyed.agent.pk, expected_version=None, actor="user:test")
    else:
        assert agent_set_status(
            keyed.agent.pk, AgentStatus.DISABLED, expected_version=None, actor="user:test"
        )
    before = Agent.objects.values_list("version", "last_seen_at").get(pk=keyed.agent.pk)
    commands_before = list(Command.objects.order_by("pk").values_list())
    # A disabled agent still holds its job: the report must be refused by the status check
    # in its UPDATE, not by a lost hold.
    for path, body in ((HEARTBEAT, None), (CLAIM, None), (f"/api/v1/jobs/{job.pk}/start", {"attempt": 1})):
        assert_error(post_json(client, path, body, **keyed.auth), 401, "unauthorized")
    assert Agent.objects.values_list("version", "last_seen_at").get(pk=keyed.agent.pk) == before
    assert list(Command.objects.order_by("pk").values_list()) == commands_before
    expected = CommandStatus.PENDING if action == "revoked" else CommandStatus.ACKNOWLEDGED
    assert Command.objects.get(pk=job.pk).status == expected


@pytest.mark.django_db
def test_a_re_enabled_agent_authenticates_again(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent]
) -> None:
    keyed = make_keyed_agent()
    assert client.post(HEARTBEAT, **keyed.auth).status_code == 200
    agent_set_status(keyed.agent.pk, AgentStatus.DISABLED, expected_version=None, actor="user:test")
    assert client.post(HEARTBEAT, **keyed.auth).status_code == 401
    agent_set_status(keyed.agent.pk, AgentStatus.ACTIVE, expected_version=None, actor="user:test")
    assert client.post(HEARTBEAT, **keyed.auth).status_code == 200


@pytest.mark.django_db
def test_the_agent_api_skips_session_user_and_messages(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent]
) -> None:
    keyed = make_keyed_agent()
    api = client.post(HEARTBEAT, **keyed.auth)
    assert api.status_code == 200
    for attribute in ("session", "user", "_messages"):
        assert not hasattr(api.wsgi_request, attribute), attribute
    assert "Cookie" not in api.get("Vary", "")
    # Everything else keeps Django's middleware: the admin's login page still sets its CSRF cookie.
    login = client.get("/admin/login/")
    assert login.status_code == 200
    assert hasattr(login.wsgi_request, "session")
    assert hasattr(login.wsgi_request, "user")
    assert "csrftoken" in login.cookies


def _served(method: str, path: str, key: str = "") -> tuple[int, bytes]:
    """One request through Django's WSGI handler, as gunicorn calls it: unlike the test
    client, it runs the request_started/finished connection housekeeping."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "CONTENT_LENGTH": "0",
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
    }
    if key:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    status: list[str] = []
    response = WSGIHandler()(environ, lambda line, headers: status.append(line))
    try:
        body = b"".join(response)
    finally:
        response.close()  # request_finished: Django's connection housekeeping
    return int(status[0].split()[0]), body


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_closed_connection_costs_the_agent_api_one_503_and_the_admin_nothing(
    make_keyed_agent: Callable[..., KeyedAgent],
) -> None:
    """The agent API skips the per-request health check: a connection the server closed
    fails one request with 503 `unavailable`, and the next request reconnects."""
    keyed = make_keyed_agent()
    assert _served("POST", HEARTBEAT, keyed.key)[0] == 200

    def connection_killed() -> None:  # fault injection: a database restart, for this worker
        with psycopg.connect(_conninfo(), autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])

    connection_killed()
    status, body = _served("POST", HEARTBEAT, keyed.key)
    assert (status, json.loads(body)["error"]) == (503, "unavailable")
    assert _served("POST", HEARTBEAT, keyed.key)[0] == 200
    connection_killed()
    assert _served("GET", "/admin/login/")[0] == 200  # the health check reconnected first
