"""The floor: hand-written set-based SQL making the same change as each controller, no batching.

One statement per step, all in one transaction, at the benchmark's parameters (the
defaults, see bench.generate.BENCH_PARAMS). This is what a
careful DBA would write as a cron job; the controllers must stay within a small factor of it.
Each function returns rows changed per step, keyed like the controller's steps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from bench.generate import BENCH_PARAMS

ACTIVE = "('acknowledged', 'running')"
PROGRESS = "GREATEST(last_progress_at, started_at, acknowledged_at)"


def _run(statements: list[tuple[str, str]], params: dict[str, Any]) -> dict[str, int]:
    changed: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        for step, sql in statements:
            cursor.execute(sql, params)
            changed[step] = changed.get(step, 0) + cursor.rowcount
    return changed


def agent_health(now: datetime) -> dict[str, int]:
    stale_seconds = BENCH_PARAMS["agent-health"]["stale_timeout_seconds"]
    expired_lease = "l.renew_time + l.lease_duration_seconds * interval '1 second' < %(now)s"
    return _run(
        [
            (
                "stale_offline",
                "UPDATE agents_agent SET health = 'offline', last_offline_at = %(now)s, "
                "version = version + 1 "
                "WHERE health = 'online' AND (last_seen_at < %(now)s - %(stale)s * interval '1 second' "
                "OR last_seen_at IS NULL)",
            ),
            (
                # A heartbeat renews agent and lease together: an agent seen within the
                # shortest lease (10 s) is alive whatever its lease row says.
                "lease_offline",
                "UPDATE agents_agent a SET health = 'offline', last_offline_at = %(now)s, "
                "version = a.version + 1 FROM agents_agentlease l "
                f"WHERE l.agent_id = a.id AND a.health = 'online' AND {expired_lease} "
                "AND (a.last_seen_at < %(now)s - interval '10 seconds' OR a.last_seen_at IS NULL)",
            ),
            ("leases_deleted", f"DELETE FROM agents_agentlease l WHERE {expired_lease}"),
        ],
        {"now": now, "stale": stale_seconds},
    )


def job_recovery(now: datetime) -> dict[str, int]:
    requeue = (
        "status = 'pending', agent_id = NULL, acknowledged_at = NULL, started_at = NULL, "
        "last_progress_at = NULL, queued_at = %(now)s, version = version + 1"
    )
    stuck = f"status IN {ACTIVE} AND {PROGRESS} < %(now)s - interval '30 minutes'"
    holder_offline = (
        f"status IN {ACTIVE} AND agent_id IN "
        "(SELECT id FROM agents_agent WHERE health <> 'online' OR status <> 'active')"
    )
    not_picked_up = (
        "NOT is_platform_job AND status = 'acknowledged' AND started_at IS NULL "
        "AND acknowledged_at < %(now)s - interval '10 minutes'"
    )
    return _run(
        [
            (
                "recovered_stuck",
                f"UPDATE commands_command SET {requeue}, status_reason = 'stuck', error_message = 'stuck' "
                f"WHERE {stuck} AND dispatch_attempts < 3",
            ),
            (
                "recovered_holder_offline",
                f"UPDATE commands_command SET {requeue}, status_reason = 'holder_offline', "
                f"error_message = 'holder offline' WHERE {holder_offline} AND dispatch_attempts < 3",
            ),
            (
                "reassigned_not_picked_up",
                f"UPDATE commands_command SET {requeue}, status_reason = 'not_picked_up', "
                f"error_message = 'not picked up' WHERE {not_picked_up} AND dispatch_attempts < 3",
            ),
            (
                "failed_exhausted",
                "UPDATE commands_command SET status = 'failed', status_reason = 'retries_exhausted', "
                "error_message = 'exceeded maximum retry attempts (3)', completed_at = %(now)s, "
                f"version = version + 1 WHERE (({stuck}) OR ({holder_offline}) OR ({not_picked_up})) "
                "AND dispatch_attempts >= 3",
            ),
            (
                "expired_in_queue",
                "UPDATE commands_command SET status = 'expired', status_reason = 'queue_timeout', "
                "completed_at = %(now)s, version = version + 1 "
                "WHERE status = 'pending' AND queued_at < %(now)s - interval '60 minutes'",
            ),
            (
                "expired_deadline",
                "UPDATE commands_command SET status = 'expired', status_reason = 'deadline_passed', "
                "completed_at = %(now)s, version = version + 1 "
                "WHERE status = 'pending' AND expires_at < %(now)s",
            ),
        ],
        {"now": now},
    )


def queue_priority(now: datetime) -> dict[str, int]:
    pending = "c.status = 'pending' AND c.is_platform_job AND c.agent_id IS NULL"
    return _run(
        [
            (
                "reprioritized",
                f"""
                WITH depth AS (
                    SELECT tenant_id, count(*) AS n FROM commands_command c WHERE {pending} GROUP BY tenant_id
                ), target AS (
                    SELECT c.id,
                           CASE t.plan WHEN 'enterprise' THEN 100 WHEN 'business' THEN 75
                                       WHEN 'team' THEN 50 ELSE 25 END
                           + GREATEST(0, floor(extract(epoch FROM %(now)s - c.queued_at) / 60))::int * 2
                           + GREATEST(0, 10 - d.n) AS priority
                    FROM commands_command c
                    JOIN tenants_tenant t ON t.id = c.tenant_id
                    JOIN depth d ON d.tenant_id = c.tenant_id
                    WHERE {pending}
                )
                UPDATE commands_command c SET queue_priority = target.priority, version = c.version + 1
                FROM target WHERE c.id = target.id AND c.queue_priority <> target.priority
                """,
            )
        ],
        {"now": now},
    )


def token_cleanup(now: datetime) -> dict[str, int]:
    return _run(
        [
            (
                "deleted",
                "DELETE FROM tokens_bootstraptoken WHERE "
                "(status = 'revoked' AND revoked_at < %(now)s - interval '30 days') OR "
                "(status = 'expired' AND expires_at < %(now)s - interval '30 days') OR "
                "(status = 'exhausted' AND status_changed_at < %(now)s - interval '30 days')",
            ),
            (
                "expired",
                "UPDATE tokens_bootstraptoken SET status = 'expired', status_changed_at = %(now)s "
                "WHERE status = 'active' AND expires_at < %(now)s",
            ),
            (
                "exhausted",
                "UPDATE tokens_bootstraptoken SET status = 'exhausted', status_changed_at = %(now)s "
                "WHERE status = 'active' AND current_uses >= max_uses",
            ),
        ],
        {"now": now},
    )


def audit_retention(now: datetime) -> dict[str, int]:
    return _run(
        [("deleted", "DELETE FROM audit_auditlog WHERE created_at < %(now)s - interval '365 days'")],
        {"now": now},
    )


FLOORS: dict[str, Callable[[datetime], dict[str, int]]] = {
    "agent-health": agent_health,
    "job-recovery": job_recovery,
    "queue-priority": queue_priority,
    "token-cleanup": token_cleanup,
    "audit-retention": audit_retention,
}
