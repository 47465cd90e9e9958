"""Cancel and retry from the command changelist, and the version-checked change form."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.test import Client
from django.urls import reverse

from controlplane.agents.models import Agent
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command, CommandStatus, StatusReason
from controlplane.common.db import db_now
from tests.operator.conftest import loaded_version_of, messages_of

pytestmark = pytest.mark.django_db


def _claim(command: Command, agent: Agent) -> None:
    """A claim as the agent API does it: holder set, acknowledged, attempts + 1, version + 1."""
    try:
        from controlplane.commands.services import command_claim
    except ImportError:  # the agent API is not there: the same conditional UPDATE by hand
        Command.objects.filter(pk=command.pk, status=CommandStatus.PENDING, agent__isnull=True).update(
            agent=agent,
            status=CommandStatus.ACKNOWLEDGED,
            acknowledged_at=db_now(),
            dispatch_attempts=F("dispatch_attempts") + 1,
            version=F("version") + 1,
        )
        return
    claimed = command_claim(agent.pk)
    assert claimed is not None
    assert claimed.command_id == command.pk


def test_cancel_action_cancels_unfinished_and_skips_finished(
    operator_client: Client,
    run_action: Callable[..., Any],
    make_command: Callable[..., Command],
    make_agent: Any,
) -> None:
    agent = make_agent()
    pending = make_command()
    running = make_command(status=CommandStatus.RUNNING, agent=agent, acknowledged_at=db_now())
    completed = make_command(status=CommandStatus.COMPLETED, completed_at=db_now())
    before = db_now()

    response = run_action(
        operator_client, "command", "cancel_selected", [pending.pk, running.pk, completed.pk]
    )

    assert any("Canceled 2 commands; skipped 1" in m and "wrong state: 1" in m for m in messages_of(response))
    for command in (pending, running):
        command.refresh_from_db()
        assert command.status == CommandStatus.CANCELED
        assert command.status_reason == StatusReason.CANCELED_BY_OPERATOR
        assert command.completed_at is not None
        assert command.completed_at >= before
        assert command.version == 2
    assert running.agent_id == agent.pk  # the history keeps who held it
    completed.refresh_from_db()
    assert (completed.status, completed.version, completed.status_reason) == (CommandStatus.COMPLETED, 1, "")
    rows = AuditLog.objects.filter(action="command.canceled").order_by("resource_id")
    assert [(r.actor, r.resource_id, r.details["from_status"]) for r in rows] == sorted(
        [("user:oncall", str(pending.pk), "pending"), ("user:oncall", str(running.pk), "running")],
        key=lambda r: r[1],
    )


def test_retry_action_requeues_failed_with_attempts_reset(
    operator_client: Client,
    run_action: Callable[..., Any],
    make_command: Callable[..., Command],
    make_agent: Any,
) -> None:
    holder, target = make_agent(), make_agent(platform=False)
    failed = make_command(
        status=CommandStatus.FAILED,
        agent=holder,
        target_agent=target,
        dispatch_attempts=3,
        acknowledged_at=db_now() - timedelta(minutes=5),
        started_at=db_now() - timedelta(minutes=4),
        completed_at=db_now() - timedelta(minutes=1),
        status_reason=StatusReason.RETRIES_EXHAUSTED,
        error_message="exit code 2",
        queued_at=db_now() - timedelta(hours=1),
    )
    pending = make_command()
    before = db_now()

    response = run_action(operator_client, "command", "retry_selected", [failed.pk, pending.pk])

    assert any("Retried 1 commands; skipped 1" in m for m in messages_of(response))
    failed.refresh_from_db()
    assert failed.status == CommandStatus.PENDING
    assert failed.dispatch_attempts == 0
    assert failed.agent_id is None
    assert failed.target_agent_id == target.pk
    assert (failed.acknowledged_at, failed.started_at, failed.completed_at) == (None, None, None)
    assert failed.queued_at >= before
    assert (failed.status_reason, failed.error_message) == (StatusReason.RETRIED_BY_OPERATOR, "")
    assert failed.version == 2
    audit = AuditLog.objects.get(action="command.retried")
    assert (audit.actor, audit.resource_id) == ("user:oncall", str(failed.pk))
    assert audit.details["dispatch_attempts_before"] == 3
    pending.refresh_from_db()
    assert (pending.status, pending.version) == (CommandStatus.PENDING, 1)


@pytest.mark.parametrize("action", ["cancel_selected", "retry_selected"])
def test_actions_refused_without_change_permission(
    viewer_client: Client, run_action: Callable[..., Any], make_command: Callable[..., Command], action: str
) -> None:
    command = make_command(status=CommandStatus.FAILED, completed_at=db_now())
    listing = viewer_client.get(reverse("admin:commands_command_changelist"))
    assert listing.status_code == 200
    assert action not in listing.content.decode()

    run_action(viewer_client, "command", action, [command.pk])

    command.refresh_from_db()
    assert (command.status, command.version) == (CommandStatus.FAILED, 1)
    assert not AuditLog.objects.exists()


def _change_url(command: Command) -> str:
    return reverse("admin:commands_command_change", args=[command.pk])


def test_change_form_saves_only_edited_fields_and_audits(
    operator_client: Client, make_command: Callable[..., Command]
) -> None:
    command = make_command(payload={"image": "v1"})
    form = operator_client.get(_change_url(command))
    assert form.status_code == 200

    response = operator_client.post(
        _change_url(command),
        {
            "payload": '{"image": "v2"}',
            "initial-payload": '{"image": "v1"}',
            "expires_at_0": "",
            "expires_at_1": "",
            "loaded_version": loaded_version_of(form),
        },
    )

    assert response.status_code == 302
    command.refresh_from_db()
    assert (command.payload, command.version) == ({"image": "v2"}, 2)
    audit = AuditLog.objects.get(action="command.updated")
    assert audit.details["after"] == {"payload": {"image": "v2"}}


def test_change_form_refuses_save_after_concurrent_claim(
    operator_client: Client, make_command: Callable[..., Command], make_agent: Any
) -> None:
    agent = make_agent()
    command = make_command(payload={"image": "v1"})
    form = operator_client.get(_change_url(command))
    _claim(command, agent)  # lands between form load and save

    response = operator_client.post(
        _change_url(command),
        {
            "payload": '{"image": "v2"}',
            "initial-payload": '{"image": "v1"}',
            "expires_at_0": "",
            "expires_at_1": "",
            "loaded_version": loaded_version_of(form),
        },
    )

    assert response.status_code == 200  # the form again, with the error
    assert "changed concurrently, reload" in response.content.decode()
    command.refresh_from_db()
    assert command.payload == {"image": "v1"}
    assert (command.status, command.agent_id, command.version) == (CommandStatus.ACKNOWLEDGED, agent.pk, 2)
    assert not AuditLog.objects.filter(action="command.updated").exists()


def test_finished_command_form_has_nothing_editable(
    operator_client: Client, make_command: Callable[..., Command]
) -> None:
    command = make_command(status=CommandStatus.COMPLETED, payload={"a": 1}, completed_at=db_now())
    form = operator_client.get(_change_url(command))
    operator_client.post(
        _change_url(command), {"payload": '{"a": 2}', "loaded_version": loaded_version_of(form)}
    )
    command.refresh_from_db()
    assert (command.payload, command.version) == ({"a": 1}, 1)


def test_action_refuses_selection_above_the_cap(
    operator_client: Client,
    run_action: Callable[..., Any],
    make_command: Callable[..., Command],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("controlplane.common.operator_admin.ADMIN_ACTION_MAX_ROWS", 2)
    commands = [make_command() for _ in range(3)]

    response = run_action(operator_client, "command", "cancel_selected", [c.pk for c in commands])

    assert any("Select at most 2 rows" in m for m in messages_of(response))
    assert set(Command.objects.values_list("status", flat=True)) == {CommandStatus.PENDING}
    assert not AuditLog.objects.exists()
