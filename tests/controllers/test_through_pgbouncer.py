"""Every controller, through the runner, on data spanning at least three batches, behind a real
PgBouncer in transaction pooling (DISCARD ALL after every transaction).

Each batch commits on its own, so consecutive batches may run on different server
connections and nothing a session held survives between them: a walk that kept a
server-side cursor open across commits ended `error` here with `portal "..." does not
exist`. The rows are written set-based with generate_series (PostgreSQL only).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from controlplane.agents.models import Agent, AgentHealth, AgentLease
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command, CommandStatus
from controlplane.common.db import db_now
from controlplane.tokens.models import BootstrapToken, TokenStatus
from reconcilers.controllers import agent_health, job_recovery, queue_priority, token_cleanup
from reconcilers.services import config_update, run_controller
from tests.pgbouncer import PgBouncer

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]

ROWS = 12_000  # per step: three batches of the controllers' 5,000
AUDIT_BATCH = 4000  # audit-retention's batch_size here: 12,000 old rows are three batches
for _size in (
    agent_health.BATCH_SIZE,
    job_recovery.BATCH_SIZE,
    queue_priority.BATCH_SIZE,
    token_cleanup.BATCH_SIZE,
    AUDIT_BATCH,
):
    assert 2 * _size < ROWS, "each controller's data must span at least three batches"


def _sql(statement: str, params: dict[str, Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or {})


def _tenants(count: int = 10) -> None:
    _sql(
        "INSERT INTO tenants_tenant (name, plan, created_at) "
        "SELECT 'pgb-tenant-' || g, (ARRAY['free','team','business','enterprise'])[1 + g %% 4], now() "
        "FROM generate_series(1, %(n)s) g",
        {"n": count},
    )


def _agents(count: int, *, health: str, seen_ago: str, lease: tuple[int, str] | None = None) -> None:
    """`count` platform agents last seen `seen_ago` (an interval); with `lease` (duration
    seconds, renewed ago) each holds a lease."""
    _sql(
        """
        INSERT INTO agents_agent (tenant_id, name, is_platform_agent, status, health, last_seen_at,
            capabilities, max_concurrent_jobs, api_key_hash, api_key_prefix, version, created_at, updated_at)
        SELECT NULL, 'pgb-' || %(health)s || '-' || %(seen)s || '-' || g, true, 'active', %(health)s,
               now() - %(seen)s::interval, '[]'::jsonb, 1000,
               md5(%(seen)s || %(health)s || g::text) || md5('k' || g::text), substr(md5(g::text), 1, 8),
               1, now(), now()
        FROM generate_series(1, %(n)s) g
        """,
        {"n": count, "health": health, "seen": seen_ago},
    )
    if lease:
        duration, renewed_ago = lease
        _sql(
            """
            INSERT INTO agents_agentlease
                (agent_id, holder_identity, lease_duration_seconds, renew_time, version)
            SELECT id, name, %(duration)s, now() - %(ago)s::interval, 1
            FROM agents_agent WHERE name LIKE 'pgb-' || %(health)s || '-' || %(seen)s || '-%%'
            """,
            {"duration": duration, "ago": renewed_ago, "health": health, "seen": seen_ago},
        )


def _run(name: str) -> Any:
    # Time is not what these tests measure (bench/ does): on a loaded machine a run may take
    # longer than its default timeout, which would cut it at a batch boundary.
    config_update(name, {"interval_seconds": 3600, "run_timeout_seconds": 3600}, actor="user:test")
    summary = run_controller(name, force=True)
    assert summary.outcome == "success", summary.error_text
    return summary


def test_the_fixture_discards_session_state_between_transactions(through_pgbouncer: PgBouncer) -> None:
    """The pooler really is in the path, without prepared statements, and a WITH HOLD cursor
    (what `QuerySet.iterator()` declares outside a transaction) does not outlive its commit."""
    connection.ensure_connection()
    assert connection.connection.info.port == through_pgbouncer.port
    assert connection.connection.prepare_threshold is None  # PgBouncer 1.18: none in transaction mode
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DECLARE held CURSOR WITH HOLD FOR SELECT generate_series(1, 10)")
    with pytest.raises(DatabaseError, match='cursor "held" does not exist'), connection.cursor() as cursor:
        cursor.execute("FETCH 1 FROM held")
    # So the walk the controllers had before (ids streamed from QuerySet.iterator() between
    # committed batches) fails here, and the tests below would catch a return to it.
    _agents(10, health="online", seen_ago="1 second")
    with pytest.raises(DatabaseError, match="does not exist"):
        list(Agent.objects.values_list("pk", flat=True).iterator(chunk_size=2))


def test_agent_health_offlines_and_deletes_leases_in_batches(through_pgbouncer: PgBouncer) -> None:
    config_update("agent-health", {"params": {"max_offline_fraction": 1.0}}, actor="user:test")
    _agents(ROWS, health="online", seen_ago="2 hours")  # stale: stale_offline, picked from the head
    # Silent for 50 s (inside the 90 s stale timeout) with a 20 s lease renewed then: the lease
    # has expired, so lease_offline finds them through the join (keyset pages), and
    # leases_deleted deletes those leases.
    _agents(ROWS, health="online", seen_ago="50 seconds", lease=(20, "50 seconds"))
    _agents(500, health="online", seen_ago="1 second", lease=(300, "1 second"))  # healthy

    summary = _run("agent-health")

    assert dict(summary.steps) == {
        "stale_offline": ROWS,
        "lease_offline": ROWS,
        "leases_deleted": ROWS,
    }
    assert Agent.objects.filter(health=AgentHealth.ONLINE).count() == 500
    assert AgentLease.objects.count() == 500
    assert _run("agent-health").items == 0


def test_job_recovery_requeues_jobs_of_offline_holders_in_batches(through_pgbouncer: PgBouncer) -> None:
    _tenants()
    _agents(40, health="offline", seen_ago="1 hour")
    _agents(40, health="online", seen_ago="1 second")
    # Running jobs spread over offline and online holders, with fresh progress: the offline
    # holders' jobs are scattered through the index (keyset pages); the stuck ones (no
    # progress for 2 hours, online holders) are picked from the head.
    _sql(
        """
        INSERT INTO commands_command (tenant_id, is_platform_job, kind, payload, status, agent_id,
            queue_priority, queued_at, dispatch_attempts, acknowledged_at, started_at, last_progress_at,
            created_at, status_reason, error_message, version)
        SELECT (SELECT min(id) FROM tenants_tenant), true, 'pgb', '{}'::jsonb, 'running',
               (SELECT array_agg(id ORDER BY id) FROM agents_agent)[1 + g %% 80],
               0, now() - interval '3 hours', 1,
               CASE WHEN g %% 4 = 0 THEN now() - interval '2 hours' ELSE now() - interval '1 minute' END,
               CASE WHEN g %% 4 = 0 THEN now() - interval '2 hours' ELSE now() - interval '1 minute' END,
               CASE WHEN g %% 4 = 0 THEN now() - interval '2 hours' ELSE now() - interval '1 minute' END,
               now(), '', '', 1
        FROM generate_series(1, %(n)s) g
        """,
        {"n": 4 * ROWS},
    )
    offline = set(Agent.objects.filter(health=AgentHealth.OFFLINE).values_list("pk", flat=True))
    stuck = Command.objects.filter(last_progress_at__lt=db_now() - timedelta(hours=1))
    expected_stuck = stuck.count()
    expected_offline = Command.objects.exclude(pk__in=stuck).filter(agent_id__in=offline).count()
    assert expected_stuck >= ROWS
    assert expected_offline >= ROWS

    summary = _run("job-recovery")

    assert summary.steps["recovered_stuck"] == expected_stuck
    assert summary.steps["recovered_holder_offline"] == expected_offline
    assert Command.objects.filter(status=CommandStatus.PENDING).count() == expected_stuck + expected_offline
    assert not Command.objects.filter(status=CommandStatus.RUNNING, agent_id__in=offline).exists()
    assert _run("job-recovery").items == 0


def test_queue_priority_rewrites_waiting_jobs_in_key_ranges(through_pgbouncer: PgBouncer) -> None:
    _tenants()
    _sql(
        """
        INSERT INTO commands_command (tenant_id, is_platform_job, kind, payload, status, queue_priority,
            queued_at, dispatch_attempts, created_at, status_reason, error_message, version)
        SELECT (SELECT min(id) FROM tenants_tenant) + g %% 10, true, 'pgb', '{}'::jsonb, 'pending', -1,
               now() - interval '30 minutes' + g * interval '100 milliseconds', 0, now(), '', '', 1
        FROM generate_series(1, %(n)s) g
        """,
        {"n": ROWS},
    )

    summary = _run("queue-priority")

    assert summary.items == ROWS  # every job had the wrong priority (-1)
    assert not Command.objects.filter(queue_priority=-1).exists()


def test_token_cleanup_expires_exhausts_and_deletes_in_batches(through_pgbouncer: PgBouncer) -> None:
    # g % 3: 0 revoked 60 days ago (deleted), 1 active but expired, 2 active and used up
    # (exhausted: scattered among the valid tokens by expiry, keyset pages); plus valid ones.
    _sql(
        """
        INSERT INTO tokens_bootstraptoken (token_hash, token_prefix, description, status, expires_at,
            max_uses, current_uses, created_by_id, created_at, revoked_at, status_changed_at)
        SELECT md5('pgb' || g) || md5('t' || g), substr(md5('pgb' || g), 1, 8), 'pgb',
               CASE WHEN g %% 4 = 0 THEN 'revoked' ELSE 'active' END,
               now() + CASE WHEN g %% 4 = 1 THEN interval '-1 hour' ELSE (1 + g %% 97) * interval '1h' END,
               5, CASE WHEN g %% 4 = 2 THEN 5 ELSE 0 END, NULL, now() - interval '90 days',
               CASE WHEN g %% 4 = 0 THEN now() - interval '60 days' END, now() - interval '60 days'
        FROM generate_series(1, %(n)s) g
        """,
        {"n": 4 * ROWS},
    )

    summary = _run("token-cleanup")

    assert dict(summary.steps) == {"deleted": ROWS, "expired": ROWS, "exhausted": ROWS}
    assert BootstrapToken.objects.filter(status=TokenStatus.ACTIVE).count() == ROWS
    assert _run("token-cleanup").items == 0


def test_audit_retention_deletes_in_batches(through_pgbouncer: PgBouncer) -> None:
    config_update("audit-retention", {"params": {"batch_size": AUDIT_BATCH}}, actor="user:test")
    _sql(
        """
        INSERT INTO audit_auditlog (created_at, actor, action, resource_type, resource_id, details, success)
        SELECT now() - CASE WHEN g <= %(n)s THEN interval '400 days' ELSE interval '1 day' END,
               'system:pgb', 'pgb.event', 'pgb', g::text, '{}'::jsonb, true
        FROM generate_series(1, %(n)s + 100) g
        """,
        {"n": ROWS},
    )

    summary = _run("audit-retention")

    assert summary.items == ROWS
    purges = AuditLog.objects.filter(action="audit.retention.purged")
    assert purges.count() == 3
    assert AuditLog.objects.filter(action="pgb.event").count() == 100  # only the young ones are left
