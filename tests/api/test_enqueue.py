"""Enqueueing: the service's priority formula, the `enqueue` command's bad input, the admin action."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from controlplane.agents.models import Agent
from controlplane.commands.models import Command, CommandStatus
from controlplane.commands.services import EnqueueError, command_enqueue, command_enqueue_many
from controlplane.common.db import db_now
from controlplane.tenants.models import Plan, Tenant
from reconcilers.models import ReconcilerConfig
from tests.api.conftest import db_snapshot


def _set_queue_params(**params: Any) -> None:
    ReconcilerConfig.objects.update_or_create(controller="queue-priority", defaults={"params": params})


@pytest.mark.django_db
def test_enqueue_sets_formula_priority_with_current_params(make_tenant: Callable[..., Tenant]) -> None:
    _set_queue_params(
        plan_base={"free": 5, "team": 6, "business": 7, "enterprise": 300},
        age_bonus_per_minute=3,
        depth_bonus_max=4,
    )
    tenant = make_tenant(plan=Plan.ENTERPRISE)
    before = db_now()
    jobs = command_enqueue_many(tenant, "scan", [{}] * 6, is_platform_job=True)
    # plan base + 0 wait + max(0, depth_bonus_max - pending jobs including this one)
    assert [job.queue_priority for job in jobs] == [303, 302, 301, 300, 300, 300]
    one_more = command_enqueue(tenant, "scan", {"x": 1}, is_platform_job=True)
    assert one_more.queue_priority == 300
    stored = Command.objects.get(pk=one_more.pk)
    assert stored.status == CommandStatus.PENDING
    assert stored.agent_id is None
    assert stored.queued_at >= before
    assert stored.payload == {"x": 1}


@pytest.mark.django_db
def test_tenant_commands_get_no_priority_and_may_be_pinned(
    make_tenant: Callable[..., Tenant], make_agent: Callable[..., Agent]
) -> None:
    tenant = make_tenant(plan=Plan.ENTERPRISE)
    agent = make_agent(platform=False, tenant=tenant)
    job = command_enqueue(tenant, "deploy", {}, is_platform_job=False, target_agent=agent)
    assert (job.queue_priority, job.target_agent_id, job.is_platform_job) == (0, agent.pk, False)


@pytest.mark.django_db
def test_enqueue_refuses_bad_input_and_saves_nothing(
    make_tenant: Callable[..., Tenant], make_agent: Callable[..., Agent]
) -> None:
    tenant = make_tenant()
    other_agent = make_agent(platform=False)
    before = db_snapshot()
    bad_calls: list[dict[str, Any]] = [
        {"kind": ""},
        {"kind": "k" * 101},
        {"payload": ["not", "an", "object"]},
        {"is_platform_job": True, "target_agent": other_agent},
        {"is_platform_job": False, "target_agent": other_agent},  # another tenant's agent
        {"expires_at": db_now() - timedelta(seconds=1)},
    ]
    for bad in bad_calls:
        args = {"kind": "k", "payload": {}, "is_platform_job": True, **bad}
        with pytest.raises(EnqueueError):
            command_enqueue(tenant, args.pop("kind"), args.pop("payload"), **args)
    assert db_snapshot() == before


@pytest.mark.django_db
def test_enqueue_command_creates_tenant_and_jobs() -> None:
    call_command(
        "enqueue", "acme", "--create-tenant", "--plan", "team", "--count", "5", "--expires-in", "600"
    )
    tenant = Tenant.objects.get(name="acme")
    assert tenant.plan == Plan.TEAM
    jobs = Command.objects.filter(tenant=tenant)
    assert jobs.count() == 5
    assert all(job.is_platform_job and job.expires_at is not None for job in jobs)
    call_command("enqueue", "acme", "--tenant-command", "--kind", "deploy")
    assert Command.objects.filter(tenant=tenant, is_platform_job=False, kind="deploy").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "argv",
    [
        ["nobody"],  # unknown tenant without --create-tenant
        ["new", "--create-tenant", "--count", "0"],
        ["new", "--create-tenant", "--count", "100001"],
        ["new", "--create-tenant", "--expires-in", "0"],
        ["new", "--create-tenant", "--kind", "k" * 101],  # the tenant must not survive the failure
        ["new", "--create-tenant", "--target-agent", "1"],  # platform jobs are never pinned
        ["new", "--create-tenant", "--tenant-command", "--target-agent", "999999"],
        ["   "],
    ],
)
def test_enqueue_command_bad_args_exit_2_and_save_nothing(argv: list[str]) -> None:
    before = db_snapshot()
    tenants = Tenant.objects.count()
    with pytest.raises(CommandError) as excinfo:
        call_command("enqueue", *argv)
    assert excinfo.value.returncode == 2
    assert db_snapshot() == before
    assert Tenant.objects.count() == tenants


@pytest.mark.django_db
def test_admin_action_enqueues_demo_jobs(client: Client, make_tenant: Callable[..., Tenant]) -> None:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    tenants = [make_tenant(plan=Plan.FREE), make_tenant(plan=Plan.BUSINESS)]
    response = client.post(
        "/admin/tenants/tenant/",
        {"action": "enqueue_demo_jobs", "_selected_action": [t.pk for t in tenants]},
        follow=True,
    )
    assert response.status_code == 200
    for tenant in tenants:
        assert Command.objects.filter(tenant=tenant, is_platform_job=True, kind="demo").count() == 10
