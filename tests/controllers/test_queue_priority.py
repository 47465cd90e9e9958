"""queue-priority: the formula in SQL equals the Python reference; only changed rows are written."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.agents.models import Agent
from controlplane.commands.models import Command, CommandStatus
from controlplane.commands.priority import DISPATCH_ORDER, queue_priority, wait_minutes
from controlplane.common.db import db_now
from controlplane.tenants.models import Plan, Tenant
from reconcilers.controllers import queue_priority as qp_module
from reconcilers.controllers.queue_priority import QueuePriorityParams
from reconcilers.models import ReconcilerConfig
from reconcilers.registry import controller_get
from reconcilers.runtime.context import reconcile_in_context
from reconcilers.runtime.contract import LockLostError
from reconcilers.runtime.fencing import fence_grant
from reconcilers.selectors import configs_effective
from reconcilers.services import ConfigValidationError, config_update
from reconcilers.services import run_controller as run_controller_by_name
from tests.controllers.conftest import RunController, count_queries, run_context, table_snapshot

NAME = "queue-priority"


def expected_priorities(now: datetime, params: QueuePriorityParams) -> dict[int, int]:
    """The Python reference applied to every waiting platform job."""
    waiting = list(
        Command.objects.filter(status=CommandStatus.PENDING, is_platform_job=True, agent__isnull=True)
        .select_related("tenant")
        .order_by("pk")
    )
    depth = Counter(job.tenant_id for job in waiting)
    return {
        job.pk: queue_priority(
            plan=job.tenant.plan,
            plan_base=params.plan_base,
            wait_minutes=wait_minutes(job.queued_at, now),
            age_bonus_per_minute=params.age_bonus_per_minute,
            depth_bonus_max=params.depth_bonus_max,
            tenant_pending_jobs=depth[job.tenant_id],
        )
        for job in waiting
    }


def actual_priorities() -> dict[int, int]:
    return dict(
        Command.objects.filter(status=CommandStatus.PENDING, is_platform_job=True, agent__isnull=True)
        .order_by("pk")
        .values_list("pk", "queue_priority")
    )


@pytest.mark.django_db
def test_formula_matches_python_reference_for_random_jobs(
    run_controller: RunController, make_tenant: Callable[..., Tenant], make_command: Callable[..., Command]
) -> None:
    rng = random.Random(20240501)
    tenants = [make_tenant(plan=plan) for plan in Plan.values for _ in range(3)]
    now = db_now()
    for _ in range(300):
        # Exact minute boundaries, a microsecond either side, and future queue times
        # (negative waits must floor to 0, never below).
        minutes = rng.randint(-3, 200)
        micro = rng.choice([0, 1, -1, rng.randint(0, 59_999_999)])
        make_command(
            tenant=rng.choice(tenants[: rng.randint(1, len(tenants))]),
            queued_at=now - timedelta(minutes=minutes, microseconds=micro),
            queue_priority=rng.randint(-5, 500),
        )
    params = QueuePriorityParams(
        plan_base={"free": 3, "team": 40, "business": 700, "enterprise": 9000},
        age_bonus_per_minute=7,
        depth_bonus_max=30,
    )
    result = run_controller(NAME, now=now, **params.model_dump())
    expected = expected_priorities(now, params)
    assert actual_priorities() == expected
    assert result.steps["reprioritized"] > 0
    assert result.items == result.steps["reprioritized"]


@pytest.mark.django_db
def test_defaults_match_reference_and_leave_other_rows_alone(
    run_controller: RunController,
    make_tenant: Callable[..., Tenant],
    make_command: Callable[..., Command],
    make_agent: Callable[..., Agent],
) -> None:
    now = db_now()
    free, enterprise = make_tenant(plan=Plan.FREE), make_tenant(plan=Plan.ENTERPRISE)
    old = make_command(tenant=free, queued_at=now - timedelta(minutes=10, seconds=59))
    for _ in range(12):  # depth 12 > depth_bonus_max: no depth bonus for this tenant
        make_command(tenant=enterprise, queued_at=now - timedelta(seconds=30))
    holder = make_agent()
    claimed = make_command(tenant=free, status=CommandStatus.ACKNOWLEDGED, agent=holder, queue_priority=1)
    pending_but_held = make_command(tenant=free, agent=holder, queue_priority=1)
    tenant_cmd = make_command(tenant=free, is_platform_job=False, queue_priority=1)
    done = make_command(tenant=free, status=CommandStatus.COMPLETED, queue_priority=1)

    run_controller(NAME, now=now)

    old.refresh_from_db()
    # free 25 + 10 whole minutes x 2 + (10 - depth 1)
    assert old.queue_priority == 25 + 20 + 9
    assert set(Command.objects.filter(tenant=enterprise).values_list("queue_priority", flat=True)) == {100}
    for row in (claimed, pending_but_held, tenant_cmd, done):
        row.refresh_from_db()
        assert (row.queue_priority, row.version) == (1, 1)


@pytest.mark.django_db
def test_only_changed_rows_are_written_and_second_run_changes_nothing(
    run_controller: RunController, make_tenant: Callable[..., Tenant], make_command: Callable[..., Command]
) -> None:
    now = db_now()
    tenant = make_tenant(plan=Plan.TEAM)
    right = make_command(tenant=tenant, queued_at=now - timedelta(minutes=3), queue_priority=50 + 6 + 8)
    wrong = make_command(tenant=tenant, queued_at=now - timedelta(minutes=5), queue_priority=0)

    first = run_controller(NAME, now=now)
    right.refresh_from_db()
    wrong.refresh_from_db()
    assert first.steps == {"reprioritized": 1}
    assert (right.version, wrong.version) == (1, 2)
    assert wrong.queue_priority == 50 + 10 + 8

    before = table_snapshot(Command)
    second = run_controller(NAME, now=now)
    assert second.steps == {"reprioritized": 0}
    assert table_snapshot(Command) == before


@pytest.mark.django_db
def test_dry_run_changes_nothing_and_reports_the_real_count(
    run_controller: RunController, make_tenant: Callable[..., Tenant], make_command: Callable[..., Command]
) -> None:
    now = db_now()
    for plan in Plan.values:
        tenant = make_tenant(plan=plan)
        for minutes in (0, 1, 7, 30):
            make_command(tenant=tenant, queued_at=now - timedelta(minutes=minutes))
    before = table_snapshot(Command)
    dry = run_controller(NAME, now=now, dry_run=True)
    assert table_snapshot(Command) == before
    real = run_controller(NAME, now=now)
    assert dry.steps == real.steps
    assert real.steps["reprioritized"] == 16


@pytest.mark.django_db
def test_stale_fence_is_refused_and_nothing_changes(
    make_tenant: Callable[..., Tenant], make_command: Callable[..., Command]
) -> None:
    make_command(tenant=make_tenant(), queued_at=db_now() - timedelta(minutes=9))
    stale = run_context(NAME)
    fence_grant(NAME, "newer holder")
    before = table_snapshot(Command)
    with pytest.raises(LockLostError):
        reconcile_in_context(controller_get(NAME), stale)
    assert table_snapshot(Command) == before


@pytest.mark.django_db
def test_batches_cover_every_row_and_queries_grow_only_per_batch(
    monkeypatch: pytest.MonkeyPatch,
    make_tenant: Callable[..., Tenant],
    make_command: Callable[..., Command],
) -> None:
    now = db_now()
    tenants = [make_tenant(plan=plan) for plan in Plan.values]

    def fill(count: int) -> None:
        Command.objects.all().delete()
        Command.objects.bulk_create(
            Command(
                tenant=tenants[i % 4],
                kind="test",
                is_platform_job=True,
                queued_at=now - timedelta(minutes=i % 50, seconds=i % 7),
            )
            for i in range(count)
        )

    def measure(count: int) -> int:
        fill(count)
        ctx = run_context(NAME, now=now)
        queries, _ = count_queries(lambda: reconcile_in_context(controller_get(NAME), ctx))
        assert actual_priorities() == expected_priorities(now, ctx.params)
        return queries

    small, large = measure(20), measure(400)
    assert small == large, (small, large)

    monkeypatch.setattr(qp_module, "BATCH_SIZE", 50)
    per_batch_8, per_batch_16 = measure(400), measure(800)  # 8 vs 16 batches
    assert per_batch_16 - per_batch_8 == 8 * ((per_batch_8 - small) // 7)


def test_params_defaults_and_errors_name_the_field() -> None:
    params = QueuePriorityParams()
    assert params.plan_base == {"enterprise": 100, "business": 75, "team": 50, "free": 25}
    assert (params.age_bonus_per_minute, params.depth_bonus_max) == (2, 10)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"plan_base": {"free": 1}}, "plan_base"),
        ({"plan_base": {"free": 10001, "team": 1, "business": 1, "enterprise": 1}}, "plan_base.free"),
        ({"plan_base": {"free": -1, "team": 1, "business": 1, "enterprise": 1}}, "plan_base.free"),
        ({"plan_base": {"gold": 1, "free": 1, "team": 1, "business": 1, "enterprise": 1}}, "plan_base.gold"),
        ({"age_bonus_per_minute": 0}, "age_bonus_per_minute"),
        ({"age_bonus_per_minute": 1001}, "age_bonus_per_minute"),
        ({"depth_bonus_max": -1}, "depth_bonus_max"),
        ({"depth_bonus_max": 1001}, "depth_bonus_max"),
        ({"unknown": 1}, "unknown"),
    ]
    for raw, field in cases:
        with pytest.raises(ValidationError) as excinfo:
            QueuePriorityParams.model_validate(raw)
        assert field in str(excinfo.value), (raw, str(excinfo.value))
    QueuePriorityParams.model_validate(
        {"plan_base": {"free": 0, "team": 0, "business": 10000, "enterprise": 10000}, "depth_bonus_max": 0}
    )


@pytest.mark.django_db
def test_a_save_that_breaks_the_fairness_bound_is_refused_from_either_side() -> None:
    """The rule spans two controllers: a save of either side that breaks it is refused, naming
    the field, and nothing is saved; the defaults keep it ((75 + 10) / 2 = 42.5 < 60)."""
    before = ReconcilerConfig.objects.values("controller", "params", "version").order_by("controller")
    before = list(before)
    with pytest.raises(ConfigValidationError, match="max_queue_minutes") as slow:
        config_update(NAME, {"params": {"age_bonus_per_minute": 1}}, actor="user:test")  # 85 minutes
    assert slow.value.field == "params.age_bonus_per_minute"
    with pytest.raises(ConfigValidationError, match=r"fairness bound is 42\.5 minutes") as short:
        config_update("job-recovery", {"params": {"max_queue_minutes": 42}}, actor="user:test")
    assert short.value.field == "params.max_queue_minutes"
    after = list(ReconcilerConfig.objects.values("controller", "params", "version").order_by("controller"))
    assert after == before
    config_update("job-recovery", {"params": {"max_queue_minutes": 43}}, actor="user:test")  # 42.5 < 43


@pytest.mark.django_db
def test_rows_that_already_break_the_fairness_bound_keep_running_and_are_flagged(
    run_controller: RunController,
) -> None:
    ReconcilerConfig.objects.filter(controller=NAME).update(params={"age_bonus_per_minute": 1})  # by hand
    configs = configs_effective()
    for name in (NAME, "job-recovery"):
        assert configs[name].valid
        assert "fairness bound is 85 minutes" in configs[name].conflicts[0]
    assert configs_effective([NAME])[NAME].conflicts == configs[NAME].conflicts  # alone, too
    summary = run_controller_by_name(NAME, force=True, trigger="test")
    assert summary.outcome == "success", summary.error_text


def _claim_next_platform_job(agent: Agent) -> int | None:
    """Claim through the agent API's service (dispatch order `queue_priority DESC, queued_at, id`)."""
    from controlplane.commands.services import command_claim

    claimed = command_claim(agent.pk)
    return None if claimed is None else claimed.command_id


@pytest.mark.django_db
def test_free_job_is_never_starved_by_a_steady_enterprise_flood(
    run_controller: RunController, make_tenant: Callable[..., Tenant], make_agent: Callable[..., Agent]
) -> None:
    """Every minute 4 new enterprise jobs arrive and the claimers take 4 (they keep up);
    a free-plan job arrives every 10 minutes. Every free job must be claimed before it
    waits max_queue_minutes (60), i.e. before job-recovery would expire it."""
    max_queue_minutes = 60
    arrivals_per_minute = 4
    enterprise, free = make_tenant(plan=Plan.ENTERPRISE), make_tenant(plan=Plan.FREE)
    claimer = make_agent(max_concurrent_jobs=1000)
    params = QueuePriorityParams()
    start = db_now() - timedelta(minutes=200)  # simulated minutes stay in the past: no expiry
    free_waits: dict[int, int] = {}
    free_queued: dict[int, int] = {}

    def enqueue(tenant: Tenant, minute: int) -> Command:
        at = start + timedelta(minutes=minute)
        depth = Command.objects.filter(
            tenant=tenant, status=CommandStatus.PENDING, is_platform_job=True, agent__isnull=True
        ).count()
        return Command.objects.create(
            tenant=tenant,
            kind="flood",
            is_platform_job=True,
            queued_at=at,
            queue_priority=queue_priority(
                plan=tenant.plan,
                plan_base=params.plan_base,
                wait_minutes=0,
                age_bonus_per_minute=params.age_bonus_per_minute,
                depth_bonus_max=params.depth_bonus_max,
                tenant_pending_jobs=depth + 1,
            ),
        )

    for minute in range(150):
        for _ in range(arrivals_per_minute):
            enqueue(enterprise, minute)
        if minute % 10 == 0 and minute < 90:
            free_queued[enqueue(free, minute).pk] = minute
        run_controller(NAME, now=start + timedelta(minutes=minute, seconds=30))
        for _ in range(arrivals_per_minute):
            job_id = _claim_next_platform_job(claimer)
            assert job_id is not None
            if job_id in free_queued:
                free_waits[job_id] = minute - free_queued[job_id]
        for job_id, queued_minute in free_queued.items():
            assert job_id in free_waits or minute - queued_minute < max_queue_minutes, (
                f"free job queued at minute {queued_minute} still waiting at minute {minute}"
            )

    assert set(free_waits) == set(free_queued)
    # The documented bound: (75 + 10) / 2 = 42.5 minutes behind newer work.
    assert max(free_waits.values()) <= 43, free_waits
    # And the flood itself still flows: enterprise work is never far behind.
    oldest_waiting = Command.objects.filter(status=CommandStatus.PENDING).order_by(*DISPATCH_ORDER).last()
    assert oldest_waiting is None or oldest_waiting.queued_at >= start + timedelta(minutes=140)
