"""The agent API's edges: deep JSON, oversized bodies, wrong methods, 409s that reveal nothing,
and free text logged with control characters escaped."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from controlplane.api.guard import json_depth_exceeds
from controlplane.commands.models import Command, CommandStatus
from controlplane.common.logsafe import log_safe
from tests.api.conftest import KeyedAgent, assert_error, db_snapshot, post_json


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [65, 100_000])
@pytest.mark.parametrize(
    "path", ["/api/v1/agents/register", "/api/v1/agents/heartbeat", "/api/v1/jobs/1/start"]
)
def test_deeply_nested_bodies_are_400_json(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], depth: int, path: str
) -> None:
    keyed = make_keyed_agent()
    before = db_snapshot()
    body = '{"attempt": 1, "x": ' + nested(depth) + "}"
    response = post_json(client, path, raw=body, **keyed.auth)
    error = assert_error(response, 400, "too_deep")
    assert "64" in error["detail"]
    assert db_snapshot() == before


@pytest.mark.django_db
def test_depth_64_is_still_parsed(client: Client) -> None:
    body = '{"bootstrap_token": "cpb_x", "name": "n", "capabilities": [], "x": ' + nested(63) + "}"
    response = post_json(client, "/api/v1/agents/register", raw=body)
    assert response.status_code in (401, 422)  # parsed: refused for its content, not its depth


def test_depth_scan_skips_brackets_inside_strings() -> None:
    assert not json_depth_exceeds(b'{"a": "' + b"[" * 500 + b'\\"["}', 64)
    assert json_depth_exceeds(nested(65).encode(), 64)
    assert not json_depth_exceeds(nested(64).encode(), 64)


@pytest.mark.django_db
def test_oversized_body_and_wrong_method_get_the_json_error_shape(
    client: Client, settings: Any, make_keyed_agent: Callable[..., KeyedAgent]
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    keyed = make_keyed_agent()
    big = '{"attempt": 1, "message": "' + "x" * 2000 + '"}'
    assert_error(post_json(client, "/api/v1/jobs/1/progress", raw=big, **keyed.auth), 413, "body_too_large")
    wrong = client.get("/api/v1/agents/register")
    assert_error(wrong, 405, "method_not_allowed")
    assert "POST" in wrong["Allow"]
    assert_error(client.get("/api/v1/no/such/path"), 404, "not_found")


@pytest.mark.django_db
def test_409_for_another_agents_job_reads_the_same_whatever_its_status(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    holder, other = make_keyed_agent(name="holder"), make_keyed_agent(name="other")
    job = make_command()
    claimed = client.post("/api/v1/jobs/claim", **holder.auth).json()
    job_id, attempt = claimed["job_id"], claimed["attempt"]
    assert job_id == job.pk
    bodies = set()
    for status in (CommandStatus.ACKNOWLEDGED, CommandStatus.RUNNING, CommandStatus.COMPLETED):
        Command.objects.filter(pk=job_id).update(status=status)
        response = post_json(client, f"/api/v1/jobs/{job_id}/start", {"attempt": attempt}, **other.auth)
        bodies.add(response.content)
        assert_error(response, 409, "conflict")
    assert len(bodies) == 1, bodies
    assert b"running" not in next(iter(bodies))
    # The holder itself, with a stale attempt, is still told the state.
    stale = post_json(client, f"/api/v1/jobs/{job_id}/start", {"attempt": attempt + 1}, **holder.auth)
    assert "completed" in assert_error(stale, 409, "conflict")["detail"]


def test_log_safe_escapes_control_characters() -> None:
    forged = "ok\n2026-01-01 00:00:00 ERROR forged line\r\x1b[2J\u2028end\\n"
    safe = log_safe(forged)
    assert "\n" not in safe
    assert "\r" not in safe
    assert "\x1b" not in safe
    assert "\u2028" not in safe
    assert safe == "ok\\n2026-01-01 00:00:00 ERROR forged line\\r\\x1b[2J\\u2028end\\\\n"
    assert log_safe("café ✓") == "café ✓"


@pytest.mark.django_db
def test_progress_messages_are_logged_escaped(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_command: Callable[..., Command],
    caplog: Any,
) -> None:
    keyed = make_keyed_agent()
    make_command()
    claimed = client.post("/api/v1/jobs/claim", **keyed.auth).json()
    with caplog.at_level(logging.DEBUG, logger="controlplane.commands"):
        response = post_json(
            client,
            f"/api/v1/jobs/{claimed['job_id']}/progress",
            {"attempt": claimed["attempt"], "message": "50%\nERROR forged\x1b[31m"},
            **keyed.auth,
        )
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "progress" in r.getMessage()]
    assert lines == [f"command {claimed['job_id']} progress: 50%\\nERROR forged\\x1b[31m"]
