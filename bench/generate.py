"""Benchmark data generator: the issue-7 data set, written set-based with generate_series (PostgreSQL).

At scale 1.0: 1M agents (10% stale, 5% with only an expired lease),
1M commands (5% stuck with mixed attempts, 100k pending platform jobs across 1k tenants),
100k bootstrap tokens, 2M audit logs (half past a 365-day retention). `scale` shrinks
every count proportionally (0.01 gives the 10k-row smoke size).

The anchor time `now` is passed in, so every trial on a copy of the data sees the same
ages relative to the database clock it reads (the copies are taken right before a run).

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection

TENANTS = 1000
PLANS = ("free", "team", "business", "enterprise")


@dataclass(frozen=True)
class Sizes:
    agents: int
    commands: int
    pending_platform_jobs: int
    tokens: int
    audit_logs: int

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(full: int) -> int:
            return max(100, int(full * scale))

        return cls(
            agents=n(1_000_000),
            commands=n(1_000_000),
            pending_platform_jobs=n(100_000),
            tokens=n(100_000),
            audit_logs=n(2_000_000),
        )

    @property
    def total_rows(self) -> int:
        return self.agents + self.commands + self.tokens + self.audit_logs


# Parameters the benchmark runs every controller with (the defaults, except that the
# stale timeout is an hour so that no heartbeat age is near a threshold).
BENCH_PARAMS: dict[str, dict[str, Any]] = {"agent-health": {"stale_timeout_seconds": 3600}}
BENCH_RUN_TIMEOUT_SECONDS = 86400  # time the whole job: a real run would continue at its next tick


def bench_configure(controller: str) -> None:
    """Give `controller` the benchmark's parameters through the config service."""
    from reconcilers.services import config_update

    # A run may not outlast its period: the period grows with it (runs are forced anyway).
    changes: dict[str, Any] = {
        "interval_seconds": BENCH_RUN_TIMEOUT_SECONDS,
        "run_timeout_seconds": BENCH_RUN_TIMEOUT_SECONDS,
    }
    if controller in BENCH_PARAMS:
        changes["params"] = BENCH_PARAMS[controller]
    config_update(controller, changes, actor="system:bench")


# The tables each controller reads or writes; a trial generates only those, fresh.
TABLES_FOR = {
    "agent-health": ("agents",),
    "job-recovery": ("agents", "commands"),
    "queue-priority": ("agents", "commands"),
    "token-cleanup": ("tokens",),
    "audit-retention": ("audit",),
}


def generate(sizes: Sizes, groups: tuple[str, ...] = ("agents", "commands", "tokens", "audit")) -> None:
    """Empty the domain tables and fill the requested groups with fresh data. PostgreSQL only.

    Generated right before each trial so that every age is relative to the clock the
    controller then reads, and no trial pays for another's dead tuples.
    """
    if connection.vendor != "postgresql":
        raise RuntimeError("the benchmark data set is generated on PostgreSQL")
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE commands_command, agents_agentlease, agents_agent, tenants_tenant, "
            "tokens_bootstraptoken, audit_auditlog, reconcilers_reconcilerun, "
            "reconcilers_reconcilerstate RESTART IDENTITY CASCADE"
        )
        _tenants(cursor)
        if "agents" in groups or "commands" in groups:
            _agents(cursor, sizes)
        if "commands" in groups:
            _commands(cursor, sizes)
        if "tokens" in groups:
            _tokens(cursor, sizes)
        if "audit" in groups:
            _audit(cursor, sizes)
        # Rows were inserted with explicit ids: move each sequence past them, so that what
        # runs next on this database (the heartbeat benchmark's tenant and fleet) can insert.
        for table in (
            "tenants_tenant",
            "agents_agent",
            "commands_command",
            "agents_agentlease",
            "tokens_bootstraptoken",
        ):
            last_id = f"coalesce((SELECT max(id) FROM {table}), 1)"
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {last_id})")
        cursor.execute("VACUUM ANALYZE" if connection.get_autocommit() else "ANALYZE")


def _tenants(cursor: Any) -> None:
    cursor.execute(
        """
        INSERT INTO tenants_tenant (id, name, plan, created_at)
        SELECT g, 'tenant-' || g, (ARRAY['free','team','business','enterprise'])[1 + g %% 4], now()
        FROM generate_series(1, %s) g
        """,
        [TENANTS],
    )


def _agents(cursor: Any, sizes: Sizes) -> None:
    # Agents: even ids are platform agents (no tenant), odd ids belong to a tenant; 1 in 50
    # is offline or unknown. Against the benchmark's 1-hour stale timeout: 1 in 10 last beat
    # 2 hours ago (stale), 1 in 20 (platform) went silent 5 minutes ago, so only its 60 s
    # lease has expired; the rest beat seconds ago and hold 300 s leases. Every age is far
    # from its threshold, so the minute a million-row generation takes changes no count.
    cursor.execute(
        """
        INSERT INTO agents_agent (id, tenant_id, name, is_platform_agent, status, health,
            last_seen_at, last_offline_at, capabilities, max_concurrent_jobs,
            api_key_hash, api_key_prefix, version, created_at, updated_at)
        SELECT g,
               CASE WHEN g %% 2 = 0 THEN NULL ELSE 1 + g %% %(tenants)s END,
               'agent-' || g, g %% 2 = 0, 'active',
               CASE WHEN g %% 50 = 0 THEN 'offline' WHEN g %% 50 = 1 THEN 'unknown' ELSE 'online' END,
               CASE WHEN g %% 20 IN (3, 8) THEN now() - interval '2 hours'
                    WHEN g %% 20 = 12 THEN now() - interval '5 minutes'
                    ELSE now() - (g %% 20) * interval '1 second' END,
               NULL, '["linux"]'::jsonb, 4,
               md5(g::text) || md5('k' || g::text), substr(md5(g::text), 1, 8), 1, now(), now()
        FROM generate_series(1, %(agents)s) g
        """,
        {"tenants": TENANTS, "agents": sizes.agents},
    )
    cursor.execute(
        """
        INSERT INTO agents_agentlease (agent_id, holder_identity, lease_duration_seconds, renew_time, version)
        SELECT id, 'agent-' || id, CASE WHEN id % 20 IN (8, 12) THEN 60 ELSE 300 END, last_seen_at, 1
        FROM agents_agent WHERE is_platform_agent
        """
    )


def _commands(cursor: Any, sizes: Sizes) -> None:
    # Commands: the first `pending` ids are pending platform jobs spread over the tenants,
    # queued over the last 50 minutes in id order, as a real queue fills (inside
    # max_queue_minutes, so queue-priority has work and job-recovery's expiry has little);
    # then 15% running with fresh progress, 5% stuck (running, no progress for 2 hours,
    # attempts 0..4 against max_retries 3), the rest completed history. 1 in 100 of them
    # runs with fresh progress on an offline agent (ids that are multiples of 50), scattered
    # among the healthy ones: job-recovery's holder-offline step.
    cursor.execute(
        """
        INSERT INTO commands_command (id, tenant_id, is_platform_job, kind, payload, status,
            target_agent_id, agent_id, queue_priority, queued_at, dispatch_attempts, expires_at,
            acknowledged_at, started_at, last_progress_at, completed_at, created_at,
            status_reason, error_message, version)
        SELECT g, 1 + g %% %(tenants)s, true, 'bench', '{}'::jsonb,
               CASE WHEN g <= %(pending)s THEN 'pending'
                    WHEN g %% 20 = 0 THEN 'running'
                    WHEN g %% 20 IN (1, 2, 3) THEN 'running'
                    ELSE 'completed' END,
               NULL,
               CASE WHEN g <= %(pending)s THEN NULL
                    WHEN g %% 100 = 1 THEN 50 * (1 + g %% (%(agents)s / 50 - 1))
                    WHEN g %% 20 IN (0, 1, 2, 3) THEN 2 * (1 + g %% (%(agents)s / 2 - 1))
                    ELSE NULL END,
               0,
               now() - interval '50 minutes'
                   + (LEAST(g, %(pending)s)::float / %(pending)s) * interval '50 minutes',
               CASE WHEN g <= %(pending)s THEN 0 ELSE g %% 5 END,
               NULL,
               CASE WHEN g > %(pending)s AND g %% 20 = 0 THEN now() - interval '2 hours'
                    WHEN g > %(pending)s AND g %% 20 IN (1, 2, 3) THEN now() - interval '1 minute'
                    ELSE NULL END,
               CASE WHEN g > %(pending)s AND g %% 20 = 0 THEN now() - interval '2 hours'
                    WHEN g > %(pending)s AND g %% 20 IN (1, 2, 3) THEN now() - interval '1 minute'
                    ELSE NULL END,
               NULL,
               CASE WHEN g > %(pending)s AND g %% 20 NOT IN (0, 1, 2, 3) THEN now() - interval '1 day'
                    ELSE NULL END,
               now() - interval '1 day', '', '', 1
        FROM generate_series(1, %(commands)s) g
        """,
        {
            "tenants": TENANTS,
            "pending": sizes.pending_platform_jobs,
            "agents": sizes.agents,
            "commands": sizes.commands,
        },
    )


def _tokens(cursor: Any, sizes: Sizes) -> None:
    # Tokens: a quarter each active-valid, active-but-expired, exhausted-long-ago, revoked-long-ago;
    # 1 in 10 of the active-valid ones has used up its uses, scattered by expiry among the
    # others, so token-cleanup's `exhausted` step has work for its sparse walk.
    cursor.execute(
        """
        INSERT INTO tokens_bootstraptoken (token_hash, token_prefix, description, status, expires_at,
            max_uses, current_uses, created_by_id, created_at, revoked_at, status_changed_at)
        SELECT md5('t' || g) || md5('u' || g), substr(md5('t' || g), 1, 8), 'bench',
               (ARRAY['active','active','exhausted','revoked'])[1 + g %% 4],
               CASE WHEN g %% 4 = 1 THEN now() - interval '1 hour'
                    ELSE now() + interval '1 day' + g * interval '1 second' END,
               5, CASE WHEN g %% 4 = 2 OR g %% 40 = 0 THEN 5 ELSE 0 END, NULL, now() - interval '90 days',
               CASE WHEN g %% 4 = 3 THEN now() - interval '60 days' END,
               now() - interval '60 days'
        FROM generate_series(1, %(tokens)s) g
        """,
        {"tokens": sizes.tokens},
    )


def _audit(cursor: Any, sizes: Sizes) -> None:
    # Audit logs, oldest first by id (append-only): half between 730 and 366 days old, half
    # younger than 364 days, so the 365-day cutoff falls in a gap whatever the clock.
    cursor.execute(
        """
        INSERT INTO audit_auditlog (created_at, actor, action, resource_type, resource_id, details, success)
        SELECT CASE WHEN g <= %(n)s / 2
                    THEN now() - interval '730 days' + (g::float / (%(n)s / 2)) * interval '364 days'
                    ELSE now() - interval '364 days'
                         + ((g - %(n)s / 2)::float / (%(n)s / 2)) * interval '364 days' END,
               'system:bench', 'bench.event', 'bench', g::text, '{"n": 1}'::jsonb, true
        FROM generate_series(1, %(n)s) g
        """,
        {"n": sizes.audit_logs},
    )
