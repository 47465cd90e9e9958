"""agent-health: stale and lease-expired agents go offline, expired leases go, the brake holds."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from pydantic import ValidationError

from controlplane.agents.models import Agent, AgentHealth, AgentLease, AgentStatus
from controlplane.agents.services import agent_heartbeat
from controlplane.common.db import db_now
from reconcilers.controllers import agent_health as ah_module
from reconcilers.controllers.agent_health import AgentHealthParams
from reconcilers.registry import controller_get
from reconcilers.runtime.context import reconcile_in_context
from reconcilers.runtime.contract import LockLostError
from reconcilers.runtime.fencing import fence_grant
from tests.controllers.conftest import RunController, count_queries, run_context, table_snapshot

NAME = "agent-health"
MakeAgent = Callable[..., Agent]


def health(agent: Agent) -> str:
    return Agent.objects.values_list("health", flat=True).get(pk=agent.pk)


def lease(agent: Agent, renew_time: datetime, duration: int = 60) -> AgentLease:
    return AgentLease.objects.create(
        agent=agent, holder_identity="h", renew_time=renew_time, lease_duration_seconds=duration
    )


@pytest.mark.django_db
def test_stale_online_agents_go_offline_others_untouched(
    run_controller: RunController, make_agent: MakeAgent
) -> None:
    now = db_now()
    old, fresh = now - timedelta(seconds=90, microseconds=1), now - timedelta(seconds=90)
    stale = make_agent(last_seen_at=old)
    never_seen = make_agent(last_seen_at=None)
    tenant_stale = make_agent(platform=False, last_seen_at=old)
    boundary = make_agent(last_seen_at=fresh)  # exactly stale_timeout old: not older
    untouched = [
        make_agent(health=AgentHealth.UNKNOWN, last_seen_at=old),
        make_agent(health=AgentHealth.ERROR, last_seen_at=old),
        make_agent(health=AgentHealth.OFFLINE, last_seen_at=old, last_offline_at=old),
    ]
    before = {a.pk: row for a in untouched for row in Agent.objects.filter(pk=a.pk).values()}

    result = run_controller(NAME, now=now)

    assert result.steps == {"stale_offline": 3, "lease_offline": 0, "leases_deleted": 0}
    assert result.flags["brake_engaged"] is False
    for agent in (stale, never_seen, tenant_stale):
        agent.refresh_from_db()
        assert (agent.health, agent.last_offline_at, agent.version) == (AgentHealth.OFFLINE, now, 2)
        assert agent.status == AgentStatus.ACTIVE
    assert health(boundary) == AgentHealth.ONLINE
    assert {a.pk: row for a in untouched for row in Agent.objects.filter(pk=a.pk).values()} == before


@pytest.mark.django_db
def test_expired_lease_marks_agent_offline_and_is_deleted(
    run_controller: RunController, make_agent: MakeAgent
) -> None:
    now = db_now()
    seen = now - timedelta(seconds=70)  # not stale (90 s) but past its 60 s lease
    expired = make_agent(last_seen_at=seen)
    lease(expired, now - timedelta(seconds=60, microseconds=1))
    on_the_edge = make_agent(last_seen_at=seen)
    lease(on_the_edge, now - timedelta(seconds=60))  # renew + duration == now: not expired
    long_lease = make_agent(last_seen_at=seen)
    lease(long_lease, now - timedelta(seconds=70), duration=120)
    both = make_agent(last_seen_at=now - timedelta(minutes=10))  # stale and lease expired
    lease(both, now - timedelta(minutes=10))
    offline_with_lease = make_agent(health=AgentHealth.OFFLINE, last_seen_at=now - timedelta(hours=1))
    lease(offline_with_lease, now - timedelta(hours=1))
    offline_before = Agent.objects.filter(pk=offline_with_lease.pk).values().get()

    result = run_controller(NAME, now=now)

    # `both` is counted once, by the first step that marks it.
    assert result.steps == {"stale_offline": 1, "lease_offline": 1, "leases_deleted": 3}
    assert health(expired) == health(both) == AgentHealth.OFFLINE
    assert health(on_the_edge) == health(long_lease) == AgentHealth.ONLINE
    assert Agent.objects.filter(pk=offline_with_lease.pk).values().get() == offline_before
    assert set(AgentLease.objects.values_list("agent_id", flat=True)) == {on_the_edge.pk, long_lease.pk}


@pytest.mark.django_db
def test_lease_grace_extends_the_lease(run_controller: RunController, make_agent: MakeAgent) -> None:
    now = db_now()
    agent = make_agent(last_seen_at=now - timedelta(seconds=80))
    lease(agent, now - timedelta(seconds=80))
    assert run_controller(NAME, now=now, lease_grace_seconds=20).items == 0
    assert run_controller(NAME, now=now, lease_grace_seconds=19).steps["lease_offline"] == 1


def _fleet(make_agent: MakeAgent, now: datetime, online: int, stale: int) -> list[Agent]:
    agents = [make_agent(last_seen_at=now - timedelta(seconds=5)) for _ in range(online - stale)]
    return agents + [make_agent(last_seen_at=now - timedelta(minutes=5)) for _ in range(stale)]


@pytest.mark.django_db
def test_brake_holds_at_60_percent_and_lets_40_percent_through(
    run_controller: RunController, make_agent: MakeAgent
) -> None:
    now = db_now()
    _fleet(make_agent, now, online=100, stale=60)
    stale_lease_agent = Agent.objects.filter(last_seen_at__lt=now - timedelta(minutes=1)).first()
    assert stale_lease_agent is not None
    lease(stale_lease_agent, now - timedelta(minutes=5))
    before = table_snapshot(Agent, AgentLease)

    held = run_controller(NAME, now=now)
    assert held.flags["brake_engaged"] is True
    assert held.items == 0
    assert table_snapshot(Agent, AgentLease) == before  # no agent marked, no lease deleted

    revived = list(
        Agent.objects.filter(last_seen_at__lt=now - timedelta(minutes=1)).values_list("pk", flat=True)
    )
    Agent.objects.filter(pk__in=revived[:20]).update(last_seen_at=now)
    through = run_controller(NAME, now=now)
    assert through.flags["brake_engaged"] is False
    assert through.steps["stale_offline"] + through.steps["lease_offline"] == 40


@pytest.mark.django_db
def test_brake_counts_stale_and_lease_expired_agents_once_each(
    run_controller: RunController, make_agent: MakeAgent
) -> None:
    now = db_now()
    for _ in range(50):
        make_agent(last_seen_at=now - timedelta(seconds=5))
    stale = [make_agent(last_seen_at=now - timedelta(minutes=5)) for _ in range(30)]
    lease(stale[0], now - timedelta(minutes=5))  # stale and lease-expired: one agent, counted once
    for _ in range(20):
        lease(make_agent(last_seen_at=now - timedelta(seconds=75)), now - timedelta(seconds=75))

    # 50 of 100 online agents would go: exactly the 0.5 limit, which does not engage the brake.
    at_limit = run_controller(NAME, now=now, dry_run=True)
    assert at_limit.flags["brake_engaged"] is False
    assert (at_limit.steps["stale_offline"], at_limit.steps["lease_offline"]) == (30, 20)

    lease(make_agent(last_seen_at=now - timedelta(seconds=75)), now - timedelta(seconds=75))
    over = run_controller(NAME, now=now, dry_run=True)  # 51 of 101
    assert (over.flags["brake_engaged"], over.items) == (True, 0)


@pytest.mark.django_db
def test_brake_override_minimum_and_disable(run_controller: RunController, make_agent: MakeAgent) -> None:
    now = db_now()
    _fleet(make_agent, now, online=10, stale=10)
    # n = 10 is not > brake_min_agents = 10: a small fleet dying entirely is believable.
    small = run_controller(NAME, now=now, dry_run=True)
    assert (small.flags["brake_engaged"], small.steps["stale_offline"]) == (False, 10)
    held = run_controller(NAME, now=now, brake_min_agents=9)
    assert (held.flags["brake_engaged"], held.items) == (True, 0)
    disabled = run_controller(NAME, now=now, brake_min_agents=0, max_offline_fraction=1.0, dry_run=True)
    assert (disabled.flags["brake_engaged"], disabled.steps["stale_offline"]) == (False, 10)
    overridden = run_controller(NAME, now=now, brake_min_agents=0, ignore_brake=True)
    assert overridden.flags == {"brake_engaged": False, "brake_overridden": True}
    assert overridden.steps["stale_offline"] == 10
    assert not Agent.objects.filter(health=AgentHealth.ONLINE).exists()


def _mixed(make_agent: MakeAgent, now: datetime, copies: int) -> None:
    for _ in range(copies):
        make_agent(last_seen_at=now - timedelta(minutes=3))
        lease(make_agent(last_seen_at=now - timedelta(seconds=75)), now - timedelta(seconds=75))
        lease(make_agent(health=AgentHealth.OFFLINE), now - timedelta(hours=2))
        lease(make_agent(last_seen_at=now), now)
        make_agent(last_seen_at=now)
        make_agent(health=AgentHealth.UNKNOWN)


@pytest.mark.django_db
def test_second_run_changes_nothing(run_controller: RunController, make_agent: MakeAgent) -> None:
    now = db_now()
    _mixed(make_agent, now, 2)
    assert run_controller(NAME, now=now, max_offline_fraction=1).items == 8
    before = table_snapshot(Agent, AgentLease)
    assert run_controller(NAME, now=now, max_offline_fraction=1).items == 0
    assert table_snapshot(Agent, AgentLease) == before


@pytest.mark.django_db
def test_dry_run_changes_nothing_and_reports_the_real_counts(
    run_controller: RunController, make_agent: MakeAgent
) -> None:
    now = db_now()
    _mixed(make_agent, now, 3)
    before = table_snapshot(Agent, AgentLease)
    dry = run_controller(NAME, now=now, dry_run=True, max_offline_fraction=1)
    assert table_snapshot(Agent, AgentLease) == before
    real = run_controller(NAME, now=now, max_offline_fraction=1)
    assert dry.steps == real.steps == {"stale_offline": 3, "lease_offline": 3, "leases_deleted": 6}


@pytest.mark.django_db
def test_stale_fence_is_refused_and_nothing_changes(make_agent: MakeAgent) -> None:
    now = db_now()
    _mixed(make_agent, now, 1)
    stale = run_context(NAME, now=now, max_offline_fraction=1)
    fence_grant(NAME, "newer holder")
    before = table_snapshot(Agent, AgentLease)
    with pytest.raises(LockLostError):
        reconcile_in_context(controller_get(NAME), stale)
    assert table_snapshot(Agent, AgentLease) == before


@pytest.mark.django_db
def test_query_count_does_not_grow_with_rows(monkeypatch: pytest.MonkeyPatch, make_agent: MakeAgent) -> None:
    def measure(copies: int) -> int:
        AgentLease.objects.all().delete()
        Agent.objects.all().delete()
        now = db_now()
        _mixed(make_agent, now, copies)
        ctx = run_context(NAME, now=now, max_offline_fraction=1, brake_min_agents=0)  # counts the fleet
        queries, _ = count_queries(lambda: reconcile_in_context(controller_get(NAME), ctx))
        assert Agent.objects.filter(health=AgentHealth.OFFLINE).count() == 3 * copies
        return queries

    small, large = measure(2), measure(60)
    assert small == large, (small, large)
    monkeypatch.setattr(ah_module, "BATCH_SIZE", 20)
    assert measure(60) > large  # 3 batches per step: more queries per batch, never per row


def test_params() -> None:
    params = AgentHealthParams()
    assert (params.stale_timeout_seconds, params.lease_grace_seconds) == (90, 0)
    assert (params.max_offline_fraction, params.brake_min_agents) == (0.5, 10)
    AgentHealthParams(stale_timeout_seconds=60, max_offline_fraction=1.0, brake_min_agents=0)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"stale_timeout_seconds": 59}, "stale_timeout_seconds"),  # < 2 x 30 s heartbeat
        ({"stale_timeout_seconds": 86401}, "stale_timeout_seconds"),
        ({"lease_grace_seconds": -1}, "lease_grace_seconds"),
        ({"lease_grace_seconds": 3601}, "lease_grace_seconds"),
        ({"max_offline_fraction": 0}, "max_offline_fraction"),
        ({"max_offline_fraction": 1.01}, "max_offline_fraction"),
        ({"brake_min_agents": -1}, "brake_min_agents"),
        ({"brake_min_agents": 1_000_001}, "brake_min_agents"),
    ]
    for raw, field in bad:
        with pytest.raises(ValidationError, match=field):
            AgentHealthParams.model_validate(raw)
    with override_settings(AGENT_HEARTBEAT_INTERVAL_SECONDS=60):
        with pytest.raises(ValidationError, match="stale_timeout_seconds"):
            AgentHealthParams.model_validate({"stale_timeout_seconds": 119})
        AgentHealthParams.model_validate({"stale_timeout_seconds": 120})


def _race_one_sweep_against_heartbeats(order: list[int], beaters: int = 3) -> list[BaseException]:
    start = threading.Barrier(beaters + 1)
    errors: list[BaseException] = []

    def beat(pks: list[int]) -> None:
        try:
            start.wait()
            for pk in pks:
                agent_heartbeat(pk)
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)
        finally:
            connection.close()

    def sweep() -> None:
        try:
            start.wait()
            reconcile_in_context(controller_get(NAME), run_context(NAME, max_offline_fraction=1))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=beat, args=(order[i::beaters],)) for i in range(beaters)]
    threads.append(threading.Thread(target=sweep))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_heartbeats_committed_during_a_sweep_are_never_lost(make_agent: MakeAgent) -> None:
    agents = [make_agent() for _ in range(120)]
    for agent in agents:
        agent_heartbeat(agent.pk)  # leases exist, so all three steps race the beats
    rng = random.Random(7)
    for round_number in range(6):
        Agent.objects.update(last_seen_at=db_now() - timedelta(minutes=10), health=AgentHealth.ONLINE)
        AgentLease.objects.update(renew_time=db_now() - timedelta(minutes=10))
        order = [a.pk for a in agents]
        rng.shuffle(order)
        errors = _race_one_sweep_against_heartbeats(order)
        assert not errors, errors
        # Every agent heartbeated during the round: whichever committed last, none may be
        # left offline with its fresh last_seen_at.
        offline = Agent.objects.filter(health=AgentHealth.OFFLINE).count()
        assert offline == 0, f"round {round_number}: {offline} agents offline despite a fresh heartbeat"
