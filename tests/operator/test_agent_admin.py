"""Revoke, force offline, disable and enable from the agent changelist, and the change form
that never overwrites a concurrent heartbeat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from controlplane.agents.admin import AgentChangeForm
from controlplane.agents.models import Agent, AgentHealth, AgentLease, AgentStatus
from controlplane.agents.services import agent_heartbeat
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command, CommandStatus, StatusReason
from controlplane.common.db import db_now
from tests.operator.conftest import loaded_version_of, messages_of

pytestmark = pytest.mark.django_db


def test_revoke_requeues_held_jobs_keeping_target(
    operator_client: Client,
    run_action: Callable[..., Any],
    make_agent: Callable[..., Agent],
    make_command: Callable[..., Command],
) -> None:
    agent = make_agent(platform=False)
    other = make_agent()
    acknowledged = make_command(
        tenant=agent.tenant,
        is_platform_job=False,
        status=CommandStatus.ACKNOWLEDGED,
        agent=agent,
        target_agent=agent,
        acknowledged_at=db_now(),
        dispatch_attempts=1,
    )
    running = make_command(
        tenant=agent.tenant,
        is_platform_job=False,
        status=CommandStatus.RUNNING,
        agent=agent,
        acknowledged_at=db_now(),
        started_at=db_now(),
        dispatch_attempts=2,
    )
    finished = make_command(status=CommandStatus.COMPLETED, agent=agent, completed_at=db_now())
    elsewhere = make_command(status=CommandStatus.RUNNING, agent=other, acknowledged_at=db_now())
    before = db_now()

    response = run_action(operator_client, "agent", "revoke_selected", [agent.pk])

    assert any("Revoked 1 agents; skipped 0" in m for m in messages_of(response))
    agent.refresh_from_db()
    assert (agent.status, agent.version) == (AgentStatus.REVOKED, 2)
    for command, attempts in ((acknowledged, 1), (running, 2)):
        command.refresh_from_db()
        assert command.status == CommandStatus.PENDING
        assert command.status_reason == StatusReason.HOLDER_REVOKED
        assert (command.agent_id, command.acknowledged_at, command.started_at) == (None, None, None)
        assert command.queued_at >= before
        assert command.dispatch_attempts == attempts
        assert command.version == 2
    assert acknowledged.target_agent_id == agent.pk
    for untouched in (finished, elsewhere):
        status = untouched.status
        untouched.refresh_from_db()
        assert (untouched.status, untouched.version) == (status, 1)
    audit = AuditLog.objects.get(action="agent.revoked")
    assert (audit.actor, audit.resource_id) == ("user:oncall", str(agent.pk))
    assert sorted(audit.details["released_commands"]) == sorted([acknowledged.pk, running.pk])


def test_force_offline_sets_offline_on_db_clock(
    operator_client: Client, run_action: Callable[..., Any], make_agent: Callable[..., Agent]
) -> None:
    online, offline = make_agent(), make_agent(health=AgentHealth.OFFLINE)
    before = db_now()

    response = run_action(operator_client, "agent", "force_offline_selected", [online.pk, offline.pk])

    assert any("Forced offline 1 agents; skipped 1 (already done: 1" in m for m in messages_of(response))
    online.refresh_from_db()
    assert (online.health, online.version) == (AgentHealth.OFFLINE, 2)
    assert online.last_offline_at is not None
    assert online.last_offline_at >= before
    offline.refresh_from_db()
    assert (offline.version, offline.last_offline_at) == (1, None)
    audit = AuditLog.objects.get(action="agent.forced_offline")
    assert (audit.resource_id, audit.details) == (str(online.pk), {"from_health": "online"})


def test_disable_then_enable_and_revoked_stays_revoked(
    operator_client: Client, run_action: Callable[..., Any], make_agent: Callable[..., Agent]
) -> None:
    agent, revoked = make_agent(), make_agent(status=AgentStatus.REVOKED)

    run_action(operator_client, "agent", "disable_selected", [agent.pk])
    agent.refresh_from_db()
    assert (agent.status, agent.version) == (AgentStatus.DISABLED, 2)

    response = run_action(operator_client, "agent", "enable_selected", [agent.pk, revoked.pk])

    assert any("Enabled 1 agents; skipped 1" in m and "revoked is final" in m for m in messages_of(response))
    agent.refresh_from_db()
    assert (agent.status, agent.version) == (AgentStatus.ACTIVE, 3)
    revoked.refresh_from_db()
    assert (revoked.status, revoked.version) == (AgentStatus.REVOKED, 1)
    assert list(AuditLog.objects.order_by("id").values_list("action", "resource_id")) == [
        ("agent.disabled", str(agent.pk)),
        ("agent.enabled", str(agent.pk)),
    ]


@pytest.mark.parametrize(
    "action", ["revoke_selected", "force_offline_selected", "disable_selected", "enable_selected"]
)
def test_actions_refused_without_change_permission(
    viewer_client: Client, run_action: Callable[..., Any], make_agent: Callable[..., Agent], action: str
) -> None:
    agent = make_agent(status=AgentStatus.DISABLED if action == "enable_selected" else AgentStatus.ACTIVE)
    listing = viewer_client.get(reverse("admin:agents_agent_changelist"))
    assert listing.status_code == 200
    assert action not in listing.content.decode()
    status = agent.status

    run_action(viewer_client, "agent", action, [agent.pk])

    agent.refresh_from_db()
    assert (agent.status, agent.health, agent.version) == (status, AgentHealth.ONLINE, 1)
    assert not AuditLog.objects.exists()


def _change_url(agent: Agent) -> str:
    return reverse("admin:agents_agent_change", args=[agent.pk])


def _form_data(agent: Agent, loaded_version: int, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": agent.name,
        "status": agent.status,
        "capabilities": '["gpu"]',
        "initial-capabilities": '["gpu"]',
        "max_concurrent_jobs": agent.max_concurrent_jobs,
        "loaded_version": loaded_version,
    }
    return {**data, **overrides}


def test_change_form_writes_only_edited_fields_and_audits(
    operator_client: Client, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent(capabilities=["gpu"])
    form = operator_client.get(_change_url(agent))
    assert form.status_code == 200

    response = operator_client.post(
        _change_url(agent), _form_data(agent, loaded_version_of(form), max_concurrent_jobs=4)
    )

    assert response.status_code == 302
    agent.refresh_from_db()
    assert (agent.max_concurrent_jobs, agent.version, agent.health) == (4, 2, AgentHealth.ONLINE)
    audit = AuditLog.objects.get(action="agent.updated")
    assert audit.actor == "user:oncall"
    assert audit.details == {"before": {"max_concurrent_jobs": 1}, "after": {"max_concurrent_jobs": 4}}


def test_change_form_refuses_save_after_concurrent_heartbeat(
    operator_client: Client, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent(capabilities=["gpu"], health=AgentHealth.OFFLINE)
    name = agent.name
    form = operator_client.get(_change_url(agent))
    beat = agent_heartbeat(agent.pk)  # lands between form load and save

    response = operator_client.post(
        _change_url(agent), _form_data(agent, loaded_version_of(form), name="renamed", max_concurrent_jobs=4)
    )

    assert response.status_code == 200
    assert "changed concurrently, reload" in response.content.decode()
    agent.refresh_from_db()
    # Exactly as the heartbeat left it: nothing of the stale form was written.
    assert (agent.name, agent.max_concurrent_jobs, agent.capabilities) == (name, 1, ["gpu"])
    assert (agent.health, agent.last_seen_at, agent.version) == (AgentHealth.ONLINE, beat.last_seen_at, 2)
    assert not AuditLog.objects.filter(action="agent.updated").exists()


def test_change_form_status_revoke_requeues_and_revoked_is_final(
    operator_client: Client, make_agent: Callable[..., Agent], make_command: Callable[..., Command]
) -> None:
    agent = make_agent(capabilities=["gpu"])
    job = make_command(status=CommandStatus.RUNNING, agent=agent, acknowledged_at=db_now())
    form = operator_client.get(_change_url(agent))

    operator_client.post(_change_url(agent), _form_data(agent, loaded_version_of(form), status="revoked"))

    agent.refresh_from_db()
    job.refresh_from_db()
    assert agent.status == AgentStatus.REVOKED
    assert (job.status, job.status_reason, job.agent_id) == ("pending", StatusReason.HOLDER_REVOKED, None)

    form = operator_client.get(_change_url(agent))
    response = operator_client.post(
        _change_url(agent), _form_data(agent, loaded_version_of(form), status="active")
    )
    assert response.status_code == 200
    assert "Revoked is final" in response.content.decode()
    agent.refresh_from_db()
    assert (agent.status, agent.version) == (AgentStatus.REVOKED, 2)


def test_change_form_refused_without_change_permission(
    viewer_client: Client, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent(capabilities=["gpu"])
    response = viewer_client.post(_change_url(agent), _form_data(agent, 1, name="renamed"))
    assert response.status_code == 403
    agent.refresh_from_db()
    assert (agent.name != "renamed", agent.version) == (True, 1)


def test_heartbeat_after_form_validation_is_still_not_overwritten(
    operator_client: Client, make_agent: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where row locks are no-ops (SQLite), a heartbeat can land after clean() passed: the
    service's WHERE version = loaded condition refuses the save, and no history entry claims
    the change happened."""
    agent = make_agent(capabilities=["gpu"])
    name = agent.name
    form = operator_client.get(_change_url(agent))
    validated_clean = AgentChangeForm.clean

    def clean_then_heartbeat(self: AgentChangeForm) -> dict[str, Any]:
        cleaned = validated_clean(self)
        agent_heartbeat(agent.pk)  # fault injection: the write lands in the race window
        return cleaned

    monkeypatch.setattr(AgentChangeForm, "clean", clean_then_heartbeat)

    response = operator_client.post(
        _change_url(agent), _form_data(agent, loaded_version_of(form), name="renamed"), follow=True
    )

    assert any(
        "Nothing was saved" in m and "changed concurrently, reload" in m for m in messages_of(response)
    )
    agent.refresh_from_db()
    assert (agent.name, agent.version) == (name, 2)
    assert not LogEntry.objects.exists()
    assert not AuditLog.objects.filter(action="agent.updated").exists()


def test_lease_form_refuses_save_after_concurrent_renewal(
    operator_client: Client, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent()
    agent_heartbeat(agent.pk)
    lease = AgentLease.objects.get(agent=agent)
    url = reverse("admin:agents_agentlease_change", args=[lease.pk])
    form = operator_client.get(url)
    renewed = agent_heartbeat(agent.pk)  # renews the lease: version 2

    response = operator_client.post(
        url, {"lease_duration_seconds": 120, "loaded_version": loaded_version_of(form)}
    )

    assert "changed concurrently, reload" in response.content.decode()
    lease.refresh_from_db()
    assert (lease.lease_duration_seconds, lease.renew_time, lease.version) == (60, renewed.last_seen_at, 2)

    form = operator_client.get(url)
    operator_client.post(url, {"lease_duration_seconds": 120, "loaded_version": loaded_version_of(form)})
    lease.refresh_from_db()
    assert (lease.lease_duration_seconds, lease.renew_time, lease.version) == (120, renewed.last_seen_at, 3)
    assert AuditLog.objects.get(action="agent.lease.updated").details == {
        "after": {"lease_duration_seconds": 120}
    }
