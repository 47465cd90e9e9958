"""The heartbeat service: a conditional UPDATE on the database clock that never loses a beat."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection

from controlplane.agents.models import Agent, AgentHealth, AgentLease, AgentStatus
from controlplane.agents.services import AgentNotActiveError, agent_heartbeat
from controlplane.common.db import db_now


@pytest.mark.django_db
def test_heartbeat_bumps_version_sets_online_from_db_clock(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(health=AgentHealth.OFFLINE)
    before = db_now()
    result = agent_heartbeat(agent.pk)
    after = db_now()
    agent.refresh_from_db()
    assert agent.health == AgentHealth.ONLINE
    assert agent.version == 2 == result.version
    assert before <= agent.last_seen_at <= after
    lease = AgentLease.objects.get(agent=agent)
    assert lease.renew_time == agent.last_seen_at
    assert result.lease_expires_at == agent.last_seen_at + timedelta(seconds=lease.lease_duration_seconds)


@pytest.mark.django_db
def test_heartbeat_refused_for_inactive_agent(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(status=AgentStatus.DISABLED, health=AgentHealth.OFFLINE)
    with pytest.raises(AgentNotActiveError):
        agent_heartbeat(agent.pk)
    agent.refresh_from_db()
    assert (agent.version, agent.health) == (1, AgentHealth.OFFLINE)


@pytest.mark.django_db
def test_tenant_agent_heartbeat_has_no_lease(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(platform=False)
    assert agent_heartbeat(agent.pk).lease_expires_at is None
    assert not AgentLease.objects.exists()


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_heartbeats_never_lose_an_update(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    agent_heartbeat(agent.pk)  # create the lease up front
    threads, beats_each = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            barrier.wait()
            for _ in range(beats_each):
                agent_heartbeat(agent.pk)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=beat) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    agent.refresh_from_db()
    assert agent.version == 1 + 1 + threads * beats_each
    assert AgentLease.objects.get(agent=agent).version == 1 + threads * beats_each
