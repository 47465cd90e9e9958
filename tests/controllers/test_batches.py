"""The batch helpers every sweeping controller writes through: order, completeness, safety."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F

from controlplane.agents.models import Agent, AgentHealth, AgentLease
from controlplane.common.db import db_now
from controlplane.common.secrets import issue_secret
from reconcilers.queries.batches import delete_in_batches, update_in_batches
from tests.controllers.conftest import count_queries, run_context

MakeAgent = Callable[..., Agent]


@pytest.mark.parametrize("sparse", [False, True], ids=["picked-from-head", "keyset-pages"])
@pytest.mark.parametrize("bounded", [False, True], ids=["unbounded", "key-below"])
def test_update_walks_null_keys_first_then_key_order_and_changes_only_candidates(
    make_agent: MakeAgent, sparse: bool, bounded: bool
) -> None:
    now = db_now()
    never_seen = [make_agent(last_seen_at=None) for _ in range(3)]
    stale = [make_agent(last_seen_at=now - timedelta(minutes=10 - i)) for i in range(5)]
    fresh = make_agent(last_seen_at=now)
    already_offline = make_agent(health=AgentHealth.OFFLINE, last_seen_at=None)
    candidates = Agent.objects.filter(health=AgentHealth.ONLINE, last_seen_at__lt=now - timedelta(minutes=1))
    candidates = candidates | Agent.objects.filter(health=AgentHealth.ONLINE, last_seen_at=None)

    ctx = run_context("agent-health")
    count, changed = update_in_batches(
        ctx,
        candidates,
        "last_seen_at",
        2,
        {"health": AgentHealth.OFFLINE, "version": F("version") + 1},
        step="stale_offline",
        nulls_first=True,
        sparse=sparse,
        key_below=now - timedelta(minutes=1) if bounded else None,
    )

    assert count == 8
    if sparse:
        # Keyset pages of two in (NULL first, key, id) order; the order
        # inside one UPDATE's RETURNING is the database's.
        expected = [never_seen[0], never_seen[1], never_seen[2], *stale]
        cut = [sorted(changed[i : i + 2]) for i in range(0, 8, 2)]
        assert cut == [sorted(a.pk for a in expected[i : i + 2]) for i in range(0, 8, 2)]
    else:
        # Batches of two: the never-seen agents in id order first (their batch of one
        # ends that walk at the next, empty, batch), then the stalest first.
        cut = [sorted(changed[0:2]), changed[2:3], sorted(changed[3:5]), sorted(changed[5:7]), changed[7:]]
        assert cut == [
            [never_seen[0].pk, never_seen[1].pk],
            [never_seen[2].pk],
            sorted([stale[0].pk, stale[1].pk]),
            sorted([stale[2].pk, stale[3].pk]),
            [stale[4].pk],
        ]
    assert set(Agent.objects.filter(health=AgentHealth.ONLINE).values_list("pk", flat=True)) == {fresh.pk}
    assert Agent.objects.get(pk=already_offline.pk).version == already_offline.version
    assert all(v == 2 for v in Agent.objects.filter(pk__in=changed).values_list("version", flat=True))


def test_batch_count_follows_rows_not_calls_per_row(make_agent: MakeAgent) -> None:
    """Each batch is one statement in one fenced transaction; the walk ends at an empty batch."""
    now = db_now()
    for i in range(7):
        make_agent(last_seen_at=now - timedelta(minutes=5, seconds=i))
    candidates = Agent.objects.filter(health=AgentHealth.ONLINE, last_seen_at__lt=now)

    def sweep(size: int) -> int:
        Agent.objects.update(health=AgentHealth.ONLINE)
        ctx = run_context("agent-health")
        queries, _ = count_queries(
            lambda: update_in_batches(
                ctx, candidates, "last_seen_at", size, {"health": AgentHealth.OFFLINE}, step="stale_offline"
            )
        )
        assert not candidates.exists()
        return queries

    one_batch, four_batches = sweep(100), sweep(2)  # 7 rows: 1 full batch + empty; 3 full + 1 + empty
    per_batch = (four_batches - one_batch) // 3
    assert four_batches - one_batch == 3 * per_batch
    assert per_batch <= 6  # savepoint, server timeouts, the UPDATE, the fence check, release


def test_delete_returns_the_deleted_ids_in_batches(make_agent: MakeAgent) -> None:
    now = db_now()
    agents = [make_agent() for _ in range(5)]
    for i, agent in enumerate(agents):
        renewed = now - timedelta(minutes=i)
        AgentLease.objects.create(agent=agent, holder_identity="t", renew_time=renewed)
    old = AgentLease.objects.filter(renew_time__lt=now - timedelta(seconds=90))
    old_ids = list(old.values_list("pk", flat=True))

    count, deleted = delete_in_batches(
        run_context("agent-health"), old, "renew_time", 2, step="leases_deleted"
    )

    assert count == 3
    assert sorted(deleted) == sorted(old_ids)
    assert sorted(AgentLease.objects.values_list("agent_id", flat=True)) == sorted(a.pk for a in agents[:2])


def test_delete_refuses_a_model_with_cascades(make_agent: MakeAgent) -> None:
    """A raw DELETE would skip Django's cascades: the helper refuses instead of orphaning rows."""
    make_agent()
    with pytest.raises(ValueError, match="cascades"):
        delete_in_batches(
            run_context("agent-health"), Agent.objects.all(), "last_seen_at", 10, step="leases_deleted"
        )
    assert Agent.objects.count() == 1


@pytest.mark.postgres_only
def test_a_batch_probes_its_picked_ids_instead_of_scanning_every_candidate(db: object) -> None:
    """With `id IN (SELECT ... LIMIT n)` PostgreSQL hash-joins the subquery against every
    row matching the outer condition, for every batch; the batch must be n key probes."""
    now = db_now()
    secret = issue_secret("cpa")
    Agent.objects.bulk_create(
        Agent(
            name=f"plan-{i}",
            is_platform_agent=True,
            health=AgentHealth.ONLINE,
            last_seen_at=now - timedelta(hours=2, seconds=i),
            api_key_hash=f"{secret.hash[:-8]}{i:08d}",
            api_key_prefix=secret.prefix,
        )
        for i in range(20_000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agents_agent")
    statements: list[tuple[str, object]] = []

    def keep_updates(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if sql.startswith('UPDATE "agents_agent"'):
            statements.append((sql, params))
        return execute(sql, params, many, context)

    stale = Agent.objects.filter(health=AgentHealth.ONLINE, last_seen_at__lt=now - timedelta(hours=1))
    with connection.execute_wrapper(keep_updates):
        count, _ = update_in_batches(  # batches as large as production's, where the plans part
            run_context("agent-health"),
            stale,
            "last_seen_at",
            5000,
            {"health": AgentHealth.OFFLINE},
            step="stale_offline",
        )

    assert count == 20_000
    Agent.objects.update(health=AgentHealth.ONLINE)  # the first batch's candidates, for its plan
    sql, params = statements[0]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # The IN form plans a Hash Semi Join over a scan of all 20,000 candidates here.
    assert "Join" not in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Index Scan using agents_agent_pkey on agents_agent" in plan, plan
