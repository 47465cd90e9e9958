"""Claims: dispatch order, tenant scoping, deadlines, concurrency limits, and SKIP LOCKED under load.

On PostgreSQL every claim test runs through a real PgBouncer in transaction pooling.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client

from controlplane.agents.models import Agent, AgentHealth, AgentStatus
from controlplane.agents.services import AgentNotActiveError
from controlplane.commands.models import Command, CommandStatus
from controlplane.commands.priority import DISPATCH_ORDER
from controlplane.commands.services import command_claim, command_report_complete
from controlplane.common.db import db_now
from controlplane.tenants.models import Tenant
from tests.api.conftest import KeyedAgent, db_snapshot

CLAIM = "/api/v1/jobs/claim"

pytestmark = pytest.mark.usefixtures("through_pgbouncer")


def _claim(client: Client, keyed: KeyedAgent) -> Any:
    return client.post(CLAIM, **keyed.auth)


@pytest.mark.django_db
def test_claim_sets_holder_attempt_and_version(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent()
    job = make_command(payload={"image": "x"}, dispatch_attempts=2)
    before = db_now()
    response = _claim(client, keyed)
    assert response.status_code == 200
    assert response.json() == {"job_id": job.pk, "attempt": 3, "kind": "test", "payload": {"image": "x"}}
    job.refresh_from_db()
    assert (job.status, job.agent_id, job.dispatch_attempts, job.version) == (
        CommandStatus.ACKNOWLEDGED,
        keyed.agent.pk,
        3,
        2,
    )
    assert job.acknowledged_at is not None
    assert job.acknowledged_at >= before


@pytest.mark.django_db
def test_platform_claims_follow_dispatch_order(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_command: Callable[..., Command],
    make_tenant: Callable[..., Tenant],
) -> None:
    keyed = make_keyed_agent(max_concurrent_jobs=100)
    tenant = make_tenant()
    now = db_now()
    specs = [(50, 3), (100, 1), (100, 2), (50, 5), (10, 9), (100, 2)]  # (priority, minutes ago)
    for priority, minutes in specs:
        make_command(tenant=tenant, queue_priority=priority, queued_at=now - timedelta(minutes=minutes))
    make_command(tenant=tenant, is_platform_job=False)  # a tenant command: never for platform agents
    make_command(tenant=tenant, expires_at=now - timedelta(seconds=1), queue_priority=1000)  # past deadline
    expected = list(
        Command.objects.filter(is_platform_job=True, expires_at__isnull=True)
        .order_by(*DISPATCH_ORDER)
        .values_list("pk", flat=True)
    )
    claimed = [_claim(client, keyed).json()["job_id"] for _ in expected]
    assert claimed == expected
    assert _claim(client, keyed).status_code == 204


@pytest.mark.django_db
def test_tenant_agent_gets_its_pinned_or_unpinned_commands_oldest_first(
    client: Client,
    make_keyed_agent: Callable[..., KeyedAgent],
    make_command: Callable[..., Command],
    make_tenant: Callable[..., Tenant],
) -> None:
    tenant, other_tenant = make_tenant(), make_tenant()
    keyed = make_keyed_agent(tenant=tenant, max_concurrent_jobs=10)
    sibling = make_keyed_agent(tenant=tenant, name="sibling")
    now = db_now()
    unpinned = make_command(tenant=tenant, is_platform_job=False, queued_at=now - timedelta(minutes=5))
    pinned = make_command(
        tenant=tenant, is_platform_job=False, target_agent=keyed.agent, queued_at=now - timedelta(minutes=9)
    )
    make_command(tenant=tenant, is_platform_job=False, target_agent=sibling.agent)
    make_command(tenant=other_tenant, is_platform_job=False)
    make_command(tenant=tenant, is_platform_job=True, queue_priority=1000)
    claimed = [_claim(client, keyed).json()["job_id"] for _ in range(2)]
    assert claimed == [pinned.pk, unpinned.pk]
    assert _claim(client, keyed).status_code == 204


@pytest.mark.django_db
def test_claim_refused_at_max_concurrent_jobs_and_when_not_online(
    client: Client, make_keyed_agent: Callable[..., KeyedAgent], make_command: Callable[..., Command]
) -> None:
    keyed = make_keyed_agent(max_concurrent_jobs=2)
    for _ in range(4):
        make_command()
    assert _claim(client, keyed).status_code == 200
    assert _claim(client, keyed).status_code == 200
    before = db_snapshot()
    assert _claim(client, keyed).status_code == 204  # holds 2 of 2
    assert db_snapshot() == before
    offline = make_keyed_agent(name="offline")
    Agent.objects.filter(pk=offline.agent.pk).update(health=AgentHealth.OFFLINE)
    before = db_snapshot()
    assert _claim(client, offline).status_code == 204  # job-recovery would take the job straight back
    assert db_snapshot() == before
    assert Command.objects.filter(status=CommandStatus.PENDING).count() == 2


@pytest.mark.django_db
def test_service_refuses_inactive_agent(
    make_agent: Callable[..., Agent], make_command: Callable[..., Command]
) -> None:
    agent = make_agent(status=AgentStatus.DISABLED)
    make_command()
    with pytest.raises(AgentNotActiveError):
        command_claim(agent.pk)
    assert not Command.objects.exclude(status=CommandStatus.PENDING).exists()


CLAIMERS = 8
JOBS = 1000


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_claimers_take_each_job_once_and_always_the_best_remaining(
    make_agent: Callable[..., Agent], make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant()
    now = db_now()
    priorities = random.Random(7).sample(range(10 * JOBS), JOBS)  # distinct: rank is unambiguous
    Command.objects.bulk_create(
        [
            Command(tenant=tenant, is_platform_job=True, kind="load", queue_priority=p, queued_at=now)
            for p in priorities
        ]
    )
    ranked = list(Command.objects.order_by(*DISPATCH_ORDER).values_list("pk", flat=True))
    rank = {pk: i for i, pk in enumerate(ranked)}
    agents = [make_agent(max_concurrent_jobs=1) for _ in range(CLAIMERS)]
    claims: list[tuple[float, float, int]] = []  # (started, finished, job id)
    lock = threading.Lock()
    barrier = threading.Barrier(CLAIMERS)

    def claimer(agent: Agent) -> None:
        try:
            barrier.wait()
            while True:
                started = time.monotonic()
                job = command_claim(agent.pk)
                finished = time.monotonic()
                if job is None:
                    return
                with lock:
                    claims.append((started, finished, job.command_id))
                command_report_complete(agent, job.command_id, job.attempt)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    claimed_ids = [job_id for _, _, job_id in claims]
    assert len(claimed_ids) == JOBS
    assert set(claimed_ids) == set(ranked)  # every job exactly once
    assert Command.objects.filter(status=CommandStatus.COMPLETED, dispatch_attempts=1).count() == JOBS
    # Best remaining: when a claim finished, every better-ranked job was already claimed or
    # being claimed by a call in flight. So no claim that *started* after it finished may
    # return a better-ranked job.
    claims.sort()
    starts = [started for started, _, _ in claims]
    suffix_best = [JOBS] * (len(claims) + 1)
    for i in range(len(claims) - 1, -1, -1):
        suffix_best[i] = min(suffix_best[i + 1], rank[claims[i][2]])
    for _, finished, job_id in claims:
        later = bisect.bisect_right(starts, finished)
        assert suffix_best[later] > rank[job_id], "a later claim got a better job than an earlier one"
    # And the claims really overlapped (the test would prove nothing serially).
    overlaps = sum(1 for a, b in itertools.pairwise(claims) if b[0] < a[1])
    assert overlaps > 0


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_that_waited_for_the_agent_lock_sees_the_job_its_holder_just_claimed(
    make_agent: Callable[..., Agent], make_command: Callable[..., Command]
) -> None:
    """Two claims of one agent at max_concurrent_jobs = 1: the second waits on the agent row
    while the first claims a job and commits. The held-jobs count the second acts on must
    include that job (a count read in the statement that waited comes from its snapshot,
    taken before the wait), so it gets nothing."""
    agent = make_agent(max_concurrent_jobs=1)
    first, _second = make_command(), make_command()
    first_holds, release = threading.Event(), threading.Event()

    def first_claim() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT id FROM agents_agent WHERE id = %s FOR UPDATE", [agent.pk])
                Command.objects.filter(pk=first.pk).update(
                    agent=agent, status=CommandStatus.ACKNOWLEDGED, dispatch_attempts=1
                )
                first_holds.set()
                assert release.wait(30)
        finally:
            connection.close()

    claimed: list[Any] = []

    def second_claim() -> None:
        try:
            claimed.append(command_claim(agent.pk))
        finally:
            connection.close()

    holder = threading.Thread(target=first_claim)
    holder.start()
    assert first_holds.wait(30)
    waiter = threading.Thread(target=second_claim)
    waiter.start()
    deadline = time.monotonic() + 30
    with connection.cursor() as cursor:  # until the second claim waits on the agent row's lock
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the second claim never waited on the agent's lock")
    release.set()
    holder.join(30)
    waiter.join(30)
    assert claimed == [None]
    assert list(Command.objects.filter(agent=agent).values_list("pk", flat=True)) == [first.pk]
