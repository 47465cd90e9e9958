"""Schemathesis against the served OpenAPI schema: no 5xx, and every response conforms to it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controlplane.api.api import api
from controlplane.commands.models import Command
from tests.api.conftest import KeyedAgent

API_PREFIX = "/api/v1/"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


# Loaded from the API object (the same document /api/schema/ serves, checked below) because
# schemathesis' lazy pytest fixture loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix=API_PREFIX))
schema.app = get_wsgi_application()


@pytest.fixture(autouse=True)
def _keep_test_connection() -> Iterator[None]:
    # The WSGI handler closes "unusable" connections after each request, and a connection
    # inside the test's transaction looks unusable: detach that, as django.test.Client does.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
def test_schema_is_served_at_api_schema(client: Client) -> None:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(api.get_openapi_schema(path_prefix=API_PREFIX)))
    assert set(response.json()["paths"]) == {
        "/api/v1/agents/register",
        "/api/v1/agents/heartbeat",
        "/api/v1/jobs/claim",
        *(f"/api/v1/jobs/{{job_id}}/{action}" for action in ("start", "progress", "complete", "fail")),
    }


@pytest.fixture
def agent_headers(
    make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> dict[str, str]:
    # A few jobs so some generated ids exist and claims return 200 as well as 204.
    for _ in range(3):
        make_command()
    keyed = make_keyed_agent(max_concurrent_jobs=5)
    return {"Authorization": f"Bearer {keyed.key}"}


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@pytest.mark.django_db
def test_api_conforms_to_its_schema(case: Any, agent_headers: dict[str, str]) -> None:
    case.call_and_validate(headers=agent_headers, checks=CHECKS)
