"""job-recovery: requeue with reasons, retry ceiling, expiry, and no job stuck forever."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db.models import F
from pydantic import ValidationError

from controlplane.agents.models import Agent, AgentHealth, AgentStatus
from controlplane.commands.models import Command, CommandStatus, StatusReason
from controlplane.common.db import db_now
from controlplane.tenants.models import Tenant
from reconcilers.controllers import job_recovery as jr_module
from reconcilers.controllers.job_recovery import JobRecoveryParams
from reconcilers.models import ReconcilerConfig
from reconcilers.registry import controller_get
from reconcilers.runtime.context import reconcile_in_context
from reconcilers.runtime.contract import LockLostError
from reconcilers.runtime.fencing import fence_grant
from reconcilers.services import ConfigValidationError, config_update
from tests.controllers.conftest import RunController, count_queries, run_context, table_snapshot

NAME = "job-recovery"
MakeCommand = Callable[..., Command]
MakeAgent = Callable[..., Agent]
ZERO = {
    "recovered_stuck": 0,
    "recovered_holder_offline": 0,
    "reassigned_not_picked_up": 0,
    "failed_exhausted": 0,
    "expired_in_queue": 0,
    "expired_deadline": 0,
}


def steps(**nonzero: int) -> dict[str, int]:
    return {**ZERO, **nonzero}


def claim(job: Command, agent: Agent, at: datetime) -> None:
    """What the claim does: holder, acknowledged, acknowledged_at, attempts + 1, version + 1."""
    Command.objects.filter(pk=job.pk, status=CommandStatus.PENDING).update(
        status=CommandStatus.ACKNOWLEDGED,
        agent=agent,
        acknowledged_at=at,
        dispatch_attempts=F("dispatch_attempts") + 1,
        version=F("version") + 1,
    )


def active(make_command: MakeCommand, agent: Agent, at: datetime, **kwargs: Any) -> Command:
    kwargs.setdefault("dispatch_attempts", 1)
    kwargs.setdefault("status", CommandStatus.ACKNOWLEDGED)
    return make_command(agent=agent, acknowledged_at=at, **kwargs)


@pytest.mark.django_db
def test_claim_stuck_recover_until_max_retries_then_failed(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent
) -> None:
    from controlplane.commands.services import command_claim

    agent = make_agent(last_seen_at=db_now(), max_concurrent_jobs=5)
    job = make_command(queued_at=db_now())
    now = db_now()
    for attempt in (1, 2, 3):
        claimed = command_claim(agent.pk)
        assert claimed is not None
        assert (claimed.command_id, claimed.attempt) == (job.pk, attempt)
        now += timedelta(minutes=31)  # no progress for longer than stuck_threshold_minutes
        Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)
        result = run_controller(NAME, now=now)
        job.refresh_from_db()
        if attempt < 3:
            assert result.steps == steps(recovered_stuck=1)
            assert (job.status, job.status_reason, job.dispatch_attempts) == ("pending", "stuck", attempt)
            assert (job.agent_id, job.acknowledged_at, job.queued_at) == (None, None, now)
        else:
            assert result.steps == steps(failed_exhausted=1)
            assert (job.status, job.status_reason) == (CommandStatus.FAILED, StatusReason.RETRIES_EXHAUSTED)
            assert job.error_message == "exceeded maximum retry attempts (3)"
            assert (job.completed_at, job.dispatch_attempts) == (now, 3)
    assert command_claim(agent.pk) is None  # failed is terminal: never claimed again
    assert run_controller(NAME, now=now + timedelta(days=1)).items == 0


@pytest.mark.django_db
def test_stuck_uses_newest_progress_and_requeue_keeps_attempts_and_target(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    agent = make_agent(last_seen_at=now)
    old = now - timedelta(minutes=45)
    stuck = active(make_command, agent, old, target_agent=agent, dispatch_attempts=2)
    progressing = active(make_command, agent, old, last_progress_at=now - timedelta(minutes=29))
    started_recently = active(make_command, agent, old, started_at=now - timedelta(minutes=5))
    running_stuck = active(
        make_command, agent, old, status=CommandStatus.RUNNING, started_at=old, last_progress_at=old
    )
    on_the_edge = active(make_command, agent, now - timedelta(minutes=30))  # not older than 30 min

    result = run_controller(NAME, now=now)

    assert result.steps == steps(recovered_stuck=2)
    stuck.refresh_from_db()
    assert (stuck.status, stuck.agent_id, stuck.target_agent_id) == ("pending", None, agent.pk)
    assert (stuck.dispatch_attempts, stuck.version, stuck.status_reason) == (2, 2, "stuck")
    assert stuck.error_message.startswith("no progress for 30 minutes")
    assert Command.objects.get(pk=running_stuck.pk).status == CommandStatus.PENDING
    for row in (progressing, started_recently, on_the_edge):
        assert Command.objects.get(pk=row.pk).status == CommandStatus.ACKNOWLEDGED


@pytest.mark.django_db
def test_holder_offline_or_inactive_is_recovered_on_next_run(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    healthy = make_agent(last_seen_at=now)
    going = make_agent(last_seen_at=now)
    disabled = make_agent(last_seen_at=now, status=AgentStatus.DISABLED)
    recent = now - timedelta(minutes=1)
    job = active(make_command, going, recent)
    on_disabled = active(make_command, disabled, recent, status=CommandStatus.RUNNING, started_at=recent)
    orphan = active(make_command, healthy, recent)
    Command.objects.filter(pk=orphan.pk).update(agent=None)
    fine = active(make_command, healthy, recent)

    first = run_controller(NAME, now=now)
    assert first.steps == steps(recovered_holder_offline=2)  # the disabled holder and the orphan
    Agent.objects.filter(pk=going.pk).update(health=AgentHealth.OFFLINE)
    second = run_controller(NAME, now=now)
    assert second.steps == steps(recovered_holder_offline=1)
    for row in (job, on_disabled, orphan):
        row.refresh_from_db()
        assert (row.status, row.status_reason, row.agent_id) == ("pending", "holder_offline", None)
    assert Command.objects.get(pk=fine.pk).status == CommandStatus.ACKNOWLEDGED


@pytest.mark.django_db
def test_tenant_commands_not_picked_up_are_reassigned(
    run_controller: RunController,
    make_command: MakeCommand,
    make_agent: MakeAgent,
    make_tenant: Callable[..., Tenant],
    now: datetime,
) -> None:
    tenant = make_tenant()
    tenant_agent = make_agent(platform=False, tenant=tenant, last_seen_at=now)
    eleven = now - timedelta(minutes=11)
    waiting = active(
        make_command, tenant_agent, eleven, tenant=tenant, is_platform_job=False, target_agent=tenant_agent
    )
    started = active(
        make_command,
        tenant_agent,
        eleven,
        tenant=tenant,
        is_platform_job=False,
        started_at=eleven,
        status=CommandStatus.RUNNING,
    )
    young = active(
        make_command, tenant_agent, now - timedelta(minutes=9), tenant=tenant, is_platform_job=False
    )
    platform_agent = make_agent(last_seen_at=now)
    platform = active(make_command, platform_agent, eleven)  # the platform threshold is 30 min

    result = run_controller(NAME, now=now)

    assert result.steps == steps(reassigned_not_picked_up=1)
    waiting.refresh_from_db()
    assert (waiting.status, waiting.status_reason) == ("pending", "not_picked_up")
    assert (waiting.target_agent_id, waiting.agent_id, waiting.dispatch_attempts) == (
        tenant_agent.pk,
        None,
        1,
    )
    for row in (started, young, platform):
        assert Command.objects.get(pk=row.pk).status != CommandStatus.PENDING


@pytest.mark.django_db
def test_every_trigger_fails_when_attempts_are_exhausted(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    agent = make_agent(last_seen_at=now)
    gone = make_agent(health=AgentHealth.OFFLINE)
    tenant_agent = make_agent(platform=False, last_seen_at=now)
    old = now - timedelta(hours=2)
    stuck = active(make_command, agent, old, dispatch_attempts=5)
    offline = active(make_command, gone, now, dispatch_attempts=5)
    not_picked = active(
        make_command,
        tenant_agent,
        now - timedelta(minutes=15),
        is_platform_job=False,
        tenant=tenant_agent.tenant,
        dispatch_attempts=5,
    )
    retryable = active(make_command, gone, now, dispatch_attempts=4)

    result = run_controller(NAME, now=now, max_retries=5)

    assert result.steps == steps(recovered_holder_offline=1, failed_exhausted=3)
    for row in (stuck, offline, not_picked):
        row.refresh_from_db()
        assert (row.status, row.status_reason, row.completed_at) == ("failed", "retries_exhausted", now)
        assert row.error_message == "exceeded maximum retry attempts (5)"
    assert Command.objects.get(pk=retryable.pk).status == CommandStatus.PENDING


@pytest.mark.django_db
def test_expiry_by_queue_age_and_by_deadline(
    run_controller: RunController, make_command: MakeCommand, now: datetime
) -> None:
    too_old = make_command(queued_at=now - timedelta(minutes=60, microseconds=1))
    just_in_time = make_command(queued_at=now - timedelta(minutes=60))
    deadline = make_command(queued_at=now - timedelta(minutes=1), expires_at=now - timedelta(seconds=1))
    future_deadline = make_command(
        queued_at=now - timedelta(minutes=1), expires_at=now + timedelta(minutes=1)
    )
    both = make_command(queued_at=now - timedelta(hours=3), expires_at=now - timedelta(hours=1))
    tenant_cmd = make_command(queued_at=now - timedelta(hours=2), is_platform_job=False)
    done = make_command(status=CommandStatus.COMPLETED, queued_at=now - timedelta(days=3))

    result = run_controller(NAME, now=now)

    assert result.steps == steps(expired_in_queue=3, expired_deadline=1)
    for row, reason in (
        (too_old, "queue_timeout"),
        (both, "queue_timeout"),
        (tenant_cmd, "queue_timeout"),
        (deadline, "deadline_passed"),
    ):
        row.refresh_from_db()
        assert (row.status, row.status_reason, row.completed_at) == ("expired", reason, now)
    for row in (just_in_time, future_deadline):
        assert Command.objects.get(pk=row.pk).status == CommandStatus.PENDING
    done_row = Command.objects.get(pk=done.pk)
    assert (done_row.status, done_row.version) == (CommandStatus.COMPLETED, 1)


@pytest.mark.django_db
def test_job_recovered_in_a_run_is_not_expired_in_that_run(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    agent = make_agent(last_seen_at=now)
    ancient = now - timedelta(hours=5)
    job = active(make_command, agent, ancient, queued_at=ancient, expires_at=now - timedelta(hours=1))

    first = run_controller(NAME, now=now)
    job.refresh_from_db()
    assert first.steps == steps(recovered_stuck=1)
    assert (job.status, job.queued_at) == ("pending", now)

    second = run_controller(NAME, now=now + timedelta(seconds=1))
    job.refresh_from_db()
    assert second.steps == steps(expired_deadline=1)
    assert (job.status, job.status_reason) == ("expired", "deadline_passed")


def _mixed(make_command: MakeCommand, agent: Agent, gone: Agent, now: datetime, copies: int) -> None:
    old = now - timedelta(hours=1)
    for _ in range(copies):
        active(make_command, agent, old)
        active(make_command, gone, now)
        active(make_command, agent, old, dispatch_attempts=3)
        make_command(queued_at=now - timedelta(hours=2))
        make_command(queued_at=now - timedelta(minutes=5), expires_at=now - timedelta(minutes=1))
        make_command(queued_at=now)
        active(make_command, agent, now)


@pytest.mark.django_db
def test_second_run_changes_nothing(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    _mixed(make_command, make_agent(last_seen_at=now), make_agent(health=AgentHealth.OFFLINE), now, 2)
    assert run_controller(NAME, now=now).items == 10
    before = table_snapshot(Command)
    assert run_controller(NAME, now=now).items == 0
    assert table_snapshot(Command) == before


@pytest.mark.django_db
def test_dry_run_changes_nothing_and_reports_the_real_counts(
    run_controller: RunController, make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    _mixed(make_command, make_agent(last_seen_at=now), make_agent(health=AgentHealth.OFFLINE), now, 3)
    before = table_snapshot(Command)
    dry = run_controller(NAME, now=now, dry_run=True)
    assert table_snapshot(Command) == before
    real = run_controller(NAME, now=now)
    assert (
        dry.steps
        == real.steps
        == steps(
            recovered_stuck=3,
            recovered_holder_offline=3,
            failed_exhausted=3,
            expired_in_queue=3,
            expired_deadline=3,
        )
    )


@pytest.mark.django_db
def test_stale_fence_is_refused_and_nothing_changes(
    make_command: MakeCommand, make_agent: MakeAgent, now: datetime
) -> None:
    _mixed(make_command, make_agent(last_seen_at=now), make_agent(health=AgentHealth.OFFLINE), now, 1)
    stale = run_context(NAME, now=now)
    fence_grant(NAME, "newer holder")
    before = table_snapshot(Command)
    with pytest.raises(LockLostError):
        reconcile_in_context(controller_get(NAME), stale)
    assert table_snapshot(Command) == before


@pytest.mark.django_db
def test_query_count_does_not_grow_with_rows(
    monkeypatch: pytest.MonkeyPatch, make_command: MakeCommand, make_agent: MakeAgent
) -> None:
    agent, gone = make_agent(), make_agent(health=AgentHealth.OFFLINE)

    def measure(copies: int) -> int:
        Command.objects.all().delete()
        now = db_now()
        Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)
        _mixed(make_command, agent, gone, now, copies)
        ctx = run_context(NAME, now=now)
        queries, _ = count_queries(lambda: reconcile_in_context(controller_get(NAME), ctx))
        assert Command.objects.filter(status__in=["failed", "expired"]).count() == 3 * copies
        return queries

    small, large = measure(2), measure(50)
    assert small == large, (small, large)
    monkeypatch.setattr(jr_module, "BATCH_SIZE", 20)
    assert measure(50) > large  # 3 batches per busy step: per batch, never per row


def test_params() -> None:
    params = JobRecoveryParams()
    assert (params.stuck_threshold_minutes, params.tenant_stuck_threshold_minutes) == (30, 10)
    assert (params.max_retries, params.max_queue_minutes) == (3, 60)
    for field, low, high in (
        ("stuck_threshold_minutes", 1, 10080),
        ("tenant_stuck_threshold_minutes", 1, 10080),
        ("max_retries", 1, 100),
        ("max_queue_minutes", 1, 10080),
    ):
        JobRecoveryParams.model_validate({field: low})
        JobRecoveryParams.model_validate({field: high})
        for bad in (low - 1, high + 1):
            with pytest.raises(ValidationError, match=field):
                JobRecoveryParams.model_validate({field: bad})


@pytest.mark.django_db
def test_max_queue_minutes_below_the_fairness_bound_is_refused() -> None:
    with pytest.raises(ConfigValidationError, match="max_queue_minutes") as refused:
        config_update(NAME, {"params": {"max_queue_minutes": 40}}, actor="user:test")
    assert refused.value.field == "params.max_queue_minutes"
    assert "max_queue_minutes" not in ReconcilerConfig.objects.get(controller=NAME).params


@pytest.mark.django_db
def test_a_requeued_platform_job_gets_the_formula_at_wait_zero_not_its_aged_priority(
    run_controller: RunController,
    make_tenant: Callable[..., Tenant],
    make_command: MakeCommand,
    make_agent: MakeAgent,
) -> None:
    """Queued 40 minutes ago (aged priority 25 + 40 x 2), claimed, then requeued as stuck: its
    priority is the formula's at wait 0 with its tenant's depth when the run commits."""
    from controlplane.commands.services import command_claim

    tenant = make_tenant(plan="free")
    now = db_now()
    job = make_command(tenant=tenant, queued_at=now - timedelta(minutes=40), queue_priority=25 + 80 + 9)
    agent = make_agent(last_seen_at=now, max_concurrent_jobs=5)
    assert command_claim(agent.pk) is not None
    waiting = [make_command(tenant=tenant, queued_at=now) for _ in range(3)]  # the tenant's depth: 3 + itself
    tenant_command = active(
        make_command, agent, now - timedelta(hours=2), is_platform_job=False, queue_priority=7
    )
    later = now + timedelta(minutes=31)
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=later)

    result = run_controller(NAME, now=later)

    assert result.steps == steps(recovered_stuck=2)
    job.refresh_from_db()
    assert (job.status, job.queued_at) == (CommandStatus.PENDING, later)
    assert job.queue_priority == 25 + 0 * 2 + max(0, 10 - (len(waiting) + 1))  # = 31
    tenant_command.refresh_from_db()
    assert tenant_command.queue_priority == 7  # tenant commands are dispatched oldest first
