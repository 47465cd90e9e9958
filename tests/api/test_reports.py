"""Holder reports: start, progress, complete, fail, fenced by holder and attempt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from controlplane.commands.models import Command, CommandStatus, StatusReason
from controlplane.commands.transitions import requeue_values
from controlplane.common.db import db_now
from controlplane.tenants.models import Tenant
from tests.api.conftest import KeyedAgent, assert_error, db_snapshot, post_json


def _url(job_id: int | str, action: str) -> str:
    return f"/api/v1/jobs/{job_id}/{action}"


def _claimed(client: Client, keyed: KeyedAgent) -> tuple[int, int]:
    body = client.post("/api/v1/jobs/claim", **keyed.auth).json()
    return body["job_id"], body["attempt"]


@pytest.mark.django_db
def test_happy_path_start_progress_complete(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent()
    make_command()
    job_id, attempt = _claimed(client, keyed)
    response = post_json(client, _url(job_id, "start"), {"attempt": attempt}, **keyed.auth)
    assert response.json() == {"job_id": job_id, "attempt": attempt, "status": "running"}
    job = Command.objects.get(pk=job_id)
    assert job.started_at is not None
    assert job.status == CommandStatus.RUNNING
    response = post_json(
        client, _url(job_id, "progress"), {"attempt": attempt, "message": "50%"}, **keyed.auth
    )
    assert response.status_code == 200
    job.refresh_from_db()
    assert job.last_progress_at is not None
    assert job.last_progress_at >= job.started_at
    response = post_json(client, _url(job_id, "complete"), {"attempt": attempt}, **keyed.auth)
    assert response.json()["status"] == "completed"
    job.refresh_from_db()
    assert job.status == CommandStatus.COMPLETED
    assert job.completed_at is not None
    assert job.version == 5  # created 1, claim, start, progress, complete


@pytest.mark.django_db
def test_progress_on_acknowledged_job_starts_it_and_fail_records_error(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent()
    make_command()
    job_id, attempt = _claimed(client, keyed)
    assert post_json(client, _url(job_id, "progress"), {"attempt": attempt}, **keyed.auth).status_code == 200
    job = Command.objects.get(pk=job_id)
    assert job.status == CommandStatus.RUNNING
    assert job.started_at is not None
    response = post_json(
        client, _url(job_id, "fail"), {"attempt": attempt, "error": "disk full"}, **keyed.auth
    )
    assert response.json()["status"] == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_message) == (CommandStatus.FAILED, "disk full")
    assert job.completed_at is not None


@pytest.mark.django_db
def test_stale_attempt_gets_409_and_leaves_the_job_unchanged(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    old, new = make_keyed_agent(name="old"), make_keyed_agent(name="new")
    make_command()
    job_id, first_attempt = _claimed(client, old)
    post_json(client, _url(job_id, "start"), {"attempt": first_attempt}, **old.auth)
    # job-recovery requeues it; the new holder claims attempt 2.
    Command.objects.filter(pk=job_id).update(
        **requeue_values(at=db_now(), reason=StatusReason.HOLDER_OFFLINE, message="holder offline")
    )
    job_id_again, second_attempt = _claimed(client, new)
    assert (job_id_again, second_attempt) == (job_id, first_attempt + 1)
    before = db_snapshot()
    for action, extra in (("start", {}), ("progress", {}), ("complete", {}), ("fail", {"error": "x"})):
        # The slow old holder, with its old attempt, and even the new holder with the old attempt.
        for keyed in (old, new):
            response = post_json(
                client, _url(job_id, action), {"attempt": first_attempt, **extra}, **keyed.auth
            )
            assert_error(response, 409, "conflict")
        # The old holder guessing the new attempt is still not the holder.
        response = post_json(client, _url(job_id, action), {"attempt": second_attempt, **extra}, **old.auth)
        assert_error(response, 409, "conflict")
    assert db_snapshot() == before


@pytest.mark.django_db
def test_terminal_jobs_never_change_again(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent()
    make_command()
    job_id, attempt = _claimed(client, keyed)
    assert post_json(client, _url(job_id, "complete"), {"attempt": attempt}, **keyed.auth).status_code == 200
    before = db_snapshot()
    for action, extra in (("start", {}), ("progress", {}), ("complete", {}), ("fail", {"error": "late"})):
        response = post_json(client, _url(job_id, action), {"attempt": attempt, **extra}, **keyed.auth)
        assert_error(response, 409, "conflict")
    assert db_snapshot() == before


@pytest.mark.django_db
def test_start_twice_is_a_conflict(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent()
    make_command()
    job_id, attempt = _claimed(client, keyed)
    assert post_json(client, _url(job_id, "start"), {"attempt": attempt}, **keyed.auth).status_code == 200
    before = db_snapshot()
    assert_error(
        post_json(client, _url(job_id, "start"), {"attempt": attempt}, **keyed.auth), 409, "conflict"
    )
    assert db_snapshot() == before


@pytest.mark.django_db
def test_unknown_and_invisible_jobs_are_404(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_command: Callable[..., Command],
    make_tenant: Callable[..., Tenant],
) -> None:
    tenant = make_tenant()
    platform = make_keyed_agent()
    tenant_agent = make_keyed_agent(tenant=tenant, name="tenant-agent")
    other_tenant_command = make_command(is_platform_job=False)
    platform_job = make_command()
    before = db_snapshot()
    cases = [
        (platform, 999_999),
        (platform, other_tenant_command.pk),  # platform agents never hold tenant commands
        (tenant_agent, other_tenant_command.pk),  # another tenant's command
        (tenant_agent, platform_job.pk),
    ]
    for keyed, job_id in cases:
        for action in ("start", "progress", "complete"):
            assert_error(
                post_json(client, _url(job_id, action), {"attempt": 1}, **keyed.auth), 404, "not_found"
            )
    assert db_snapshot() == before


@pytest.mark.django_db
def test_other_agents_job_is_409(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    holder, other = make_keyed_agent(name="holder"), make_keyed_agent(name="other")
    make_command()
    job_id, attempt = _claimed(client, holder)
    before = db_snapshot()
    for action in ("start", "progress", "complete"):
        assert_error(
            post_json(client, _url(job_id, action), {"attempt": attempt}, **other.auth), 409, "conflict"
        )
    assert_error(
        post_json(client, _url(job_id, "fail"), {"attempt": attempt, "error": "x"}, **other.auth),
        409,
        "conflict",
    )
    assert db_snapshot() == before


BAD: dict[str, tuple[Any, int]] = {
    "not_json": ("{attempt: 1", 400),
    "empty_body": ("", 422),
    "array": ("[1]", 422),
    "missing_attempt": ({}, 422),
    "attempt_string": ({"attempt": "1"}, 422),
    "attempt_float": ({"attempt": 1.5}, 422),
    "attempt_bool": ({"attempt": True}, 422),
    "attempt_zero": ({"attempt": 0}, 422),
    "attempt_huge": ({"attempt": 2**40}, 422),
    "unknown_field": ({"attempt": 1, "status": "completed"}, 422),
}


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["start", "progress", "complete", "fail"])
def test_bad_report_bodies_are_4xx_json_and_change_nothing(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_command: Callable[..., Command],
    action: str,
) -> None:
    keyed = make_keyed_agent()
    make_command()
    job_id, attempt = _claimed(client, keyed)
    before = db_snapshot()
    for name, (body, status) in BAD.items():
        if isinstance(body, dict) and action == "fail" and name != "unknown_field":
            body = {**body, "error": "x"}
        response = (
            post_json(client, _url(job_id, action), raw=body, **keyed.auth)
            if isinstance(body, str)
            else post_json(client, _url(job_id, action), body, **keyed.auth)
        )
        assert_error(response, status)
    if action == "fail":
        for body in (
            {"attempt": attempt},
            {"attempt": attempt, "error": ""},
            {"attempt": attempt, "error": 5},
        ):
            assert_error(post_json(client, _url(job_id, action), body, **keyed.auth), 422)
    for bad_id in ("0", str(2**64), "-1"):
        response = post_json(client, _url(bad_id, action), {"attempt": attempt, "error": "x"}, **keyed.auth)
        assert 400 <= response.status_code < 500
    assert db_snapshot() == before
