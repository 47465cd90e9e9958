"""The operator services themselves: version conditions, allowed states and their messages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from controlplane.agents.models import Agent, AgentHealth, AgentStatus
from controlplane.agents.services import (
    agent_force_offline,
    agent_heartbeat,
    agent_revoke,
    agent_set_status,
    agent_update,
)
from controlplane.audit.models import AuditLog
from controlplane.commands.models import TERMINAL_STATUSES, Command, CommandStatus
from controlplane.commands.operator_services import command_cancel, command_retry, command_update
from controlplane.common.db import db_now
from controlplane.common.errors import ConcurrentModificationError, InvalidTransition
from controlplane.tenants.models import Plan
from reconcilers.models import ReconcilerConfig

pytestmark = pytest.mark.django_db
ACTOR = "user:tester"


@pytest.mark.parametrize("status", TERMINAL_STATUSES)
def test_terminal_commands_never_change(make_command: Callable[..., Command], status: str) -> None:
    command = make_command(status=status, completed_at=db_now())
    if status == CommandStatus.CANCELED:
        assert command_cancel(command.pk, expected_version=1, actor=ACTOR) is False
    else:
        with pytest.raises(InvalidTransition, match=f"it is {status}"):
            command_cancel(command.pk, expected_version=1, actor=ACTOR)
    if status != CommandStatus.FAILED:
        with pytest.raises(InvalidTransition, match="only failed commands can be retried"):
            command_retry(command.pk, expected_version=1, actor=ACTOR)
    with pytest.raises(InvalidTransition, match="finished commands never change"):
        command_update(command.pk, changes={"payload": {"x": 1}}, expected_version=1, actor=ACTOR)
    command.refresh_from_db()
    assert (command.status, command.version, command.payload) == (status, 1, {})
    assert not AuditLog.objects.exists()


def test_cancel_with_stale_version_changes_nothing(
    make_command: Callable[..., Command], make_agent: Callable[..., Agent]
) -> None:
    command = make_command()
    Command.objects.filter(pk=command.pk).update(version=2, status=CommandStatus.ACKNOWLEDGED)

    with pytest.raises(ConcurrentModificationError, match="changed concurrently, reload: version 1"):
        command_cancel(command.pk, expected_version=1, actor=ACTOR)

    command.refresh_from_db()
    assert (command.status, command.version) == (CommandStatus.ACKNOWLEDGED, 2)
    assert command_cancel(command.pk, expected_version=2, actor=ACTOR) is True
    command.refresh_from_db()
    assert (command.status, command.version) == (CommandStatus.CANCELED, 3)


def test_retry_recomputes_platform_priority_from_queue_priority_params(
    make_tenant: Any, make_command: Callable[..., Command]
) -> None:
    tenant = make_tenant(plan=Plan.BUSINESS)
    ReconcilerConfig.objects.update_or_create(
        controller="queue-priority",
        defaults={
            "params": {
                "plan_base": {"free": 1, "team": 2, "business": 300, "enterprise": 4},
                "age_bonus_per_minute": 5,
                "depth_bonus_max": 10,
            }
        },
    )
    make_command(tenant=tenant)  # one other job of this tenant already waits
    failed = make_command(tenant=tenant, status=CommandStatus.FAILED, queue_priority=7, completed_at=db_now())

    assert command_retry(failed.pk, expected_version=None, actor=ACTOR) is True

    failed.refresh_from_db()
    # plan base + 0 minutes waited + (depth bonus 10 - 2 waiting jobs, this one included)
    assert failed.queue_priority == 300 + 0 + 8


def test_tenant_command_retry_keeps_priority(make_agent: Any, make_command: Callable[..., Command]) -> None:
    agent = make_agent(platform=False)
    failed = make_command(
        tenant=agent.tenant,
        is_platform_job=False,
        target_agent=agent,
        status=CommandStatus.FAILED,
        queue_priority=7,
        completed_at=db_now(),
    )
    command_retry(failed.pk, expected_version=1, actor=ACTOR)
    failed.refresh_from_db()
    assert (failed.status, failed.queue_priority, failed.target_agent_id) == ("pending", 7, agent.pk)


def test_agent_actions_after_a_heartbeat_need_the_new_version(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    agent_heartbeat(agent.pk)  # version 2

    for action in (
        lambda: agent_revoke(agent.pk, expected_version=1, actor=ACTOR),
        lambda: agent_force_offline(agent.pk, expected_version=1, actor=ACTOR),
        lambda: agent_set_status(agent.pk, AgentStatus.DISABLED, expected_version=1, actor=ACTOR),
        lambda: agent_update(agent.pk, changes={"name": "x"}, expected_version=1, actor=ACTOR),
    ):
        with pytest.raises(ConcurrentModificationError, match="changed concurrently, reload"):
            action()
    agent.refresh_from_db()
    assert (agent.status, agent.health, agent.version) == (AgentStatus.ACTIVE, AgentHealth.ONLINE, 2)
    assert not AuditLog.objects.exists()

    assert agent_force_offline(agent.pk, expected_version=2, actor=ACTOR) is True
    agent.refresh_from_db()
    assert (agent.health, agent.version) == (AgentHealth.OFFLINE, 3)


def test_revoked_is_final(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    assert agent_revoke(agent.pk, expected_version=1, actor=ACTOR) is True
    assert agent_revoke(agent.pk, expected_version=None, actor=ACTOR) is False
    for status in (AgentStatus.ACTIVE, AgentStatus.DISABLED):
        with pytest.raises(InvalidTransition, match="revoked is final"):
            agent_set_status(agent.pk, status, expected_version=None, actor=ACTOR)
        with pytest.raises(InvalidTransition, match="revoked is final"):
            agent_update(agent.pk, changes={"status": status}, expected_version=2, actor=ACTOR)
    agent.refresh_from_db()
    assert (agent.status, agent.version) == (AgentStatus.REVOKED, 2)
    assert AuditLog.objects.filter(action="agent.revoked").count() == 1


def test_update_rejects_controller_fields(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    with pytest.raises(ValueError, match="not editable by operators: health"):
        agent_update(agent.pk, changes={"health": "offline"}, expected_version=1, actor=ACTOR)
    agent.refresh_from_db()
    assert agent.version == 1


def test_revoke_requeues_with_a_fresh_priority_and_fails_exhausted_commands(
    make_agent: Callable[..., Agent], make_command: Callable[..., Command], make_tenant: Any
) -> None:
    """A revoke hands the held commands back as job-recovery would: with claims left, requeued
    at the formula's wait-0 priority; at max_retries, failed instead of a claim more."""
    agent = make_agent()
    tenant = make_tenant(plan=Plan.BUSINESS)
    now = db_now()
    held = make_command(
        tenant=tenant,
        agent=agent,
        status=CommandStatus.RUNNING,
        dispatch_attempts=1,
        acknowledged_at=now,
        queued_at=now - timedelta(minutes=50),
        queue_priority=75 + 100,
    )
    exhausted = make_command(
        tenant=tenant,
        agent=agent,
        status=CommandStatus.ACKNOWLEDGED,
        dispatch_attempts=3,
        acknowledged_at=now,
    )
    assert agent_revoke(agent.pk, expected_version=None, actor=ACTOR) is True
    held.refresh_from_db()
    exhausted.refresh_from_db()
    assert (held.status, held.status_reason, held.agent_id) == ("pending", "holder_revoked", None)
    assert held.queue_priority == 75 + max(0, 10 - 1)
    assert (exhausted.status, exhausted.status_reason) == ("failed", "retries_exhausted")
    assert "exceeded maximum retry attempts (3)" in exhausted.error_message
    audit = AuditLog.objects.get(action="agent.revoked")
    assert sorted(audit.details["released_commands"]) == sorted([held.pk, exhausted.pk])
