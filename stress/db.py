"""Database side of the suite: the URL subprocesses use, and test-only PostgreSQL triggers.

Two instruments are installed for a scenario and dropped after it, never in a product
migration:

- a write audit: every row a controller process (application_name `cpstress-worker*`)
  inserts, updates or deletes in a domain table is logged with its transaction id, and
  every update of a ReconcilerState row is logged as a fence `grant` (fence went up) or
  `check` (fence unchanged: the runner's `WHERE fence = :mine`). From these two logs the
  suite proves that every controller write committed inside a transaction that passed a
  fence check, and that no newer grant existed when that check ran (`fence_violations`).
- a statement-level slowdown on audit-log deletes (`pg_sleep`), so a batched
  audit-retention run lasts long enough to be killed, paused or cut off mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.db import connection

from controlplane.agents.models import Agent, AgentLease
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command
from controlplane.tokens.models import BootstrapToken
from reconcilers.models import ReconcilerState

WORKER_APP_PREFIX = "cpstress-worker"
AUDITED_MODELS = (Agent, AgentLease, Command, BootstrapToken, AuditLog)


def database_url(application_name: str | None = None) -> str:
    """The URL of the database this process uses, for subprocesses that must share it."""
    cfg = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("the stress scenarios need PostgreSQL")
    auth = quote(cfg["USER"] or "postgres") + (f":{quote(cfg['PASSWORD'])}" if cfg.get("PASSWORD") else "")
    url = f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
    if application_name:
        url += f"?application_name={quote(application_name)}"
    return url


def _execute(sql: str, params: Any = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def write_audit_install() -> None:
    state = ReconcilerState._meta.db_table
    _execute(
        """
        DROP TABLE IF EXISTS stress_write_audit, stress_fence_audit;
        CREATE TABLE stress_write_audit (
            id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL, txid bigint NOT NULL,
            app text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
        CREATE INDEX stress_write_audit_txid ON stress_write_audit (txid);
        CREATE TABLE stress_fence_audit (
            id bigserial PRIMARY KEY, controller text NOT NULL, fence bigint NOT NULL,
            kind text NOT NULL, txid bigint NOT NULL, app text NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp());
        CREATE INDEX stress_fence_audit_txid ON stress_fence_audit (txid);
        CREATE OR REPLACE FUNCTION stress_write_audit_fn() RETURNS trigger AS $$
        BEGIN
            IF current_setting('application_name') LIKE 'cpstress-worker%' THEN
                INSERT INTO stress_write_audit (tbl, op, txid, app)
                VALUES (TG_TABLE_NAME, TG_OP, txid_current(), current_setting('application_name'));
            END IF;
            RETURN NULL;
        END $$ LANGUAGE plpgsql;
        CREATE OR REPLACE FUNCTION stress_fence_audit_fn() RETURNS trigger AS $$
        BEGIN
            INSERT INTO stress_fence_audit (controller, fence, kind, txid, app)
            VALUES (NEW.controller, NEW.fence,
                    CASE WHEN NEW.fence > OLD.fence THEN 'grant' ELSE 'check' END,
                    txid_current(), current_setting('application_name'));
            RETURN NULL;
        END $$ LANGUAGE plpgsql;
        """
    )
    for model in AUDITED_MODELS:
        table = model._meta.db_table
        _execute(
            f"DROP TRIGGER IF EXISTS stress_write_audit ON {table};"
            f"CREATE TRIGGER stress_write_audit AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION stress_write_audit_fn()"
        )
    _execute(
        f"DROP TRIGGER IF EXISTS stress_fence_audit ON {state};"
        f"CREATE TRIGGER stress_fence_audit AFTER UPDATE ON {state} "
        "FOR EACH ROW EXECUTE FUNCTION stress_fence_audit_fn()"
    )


def write_audit_uninstall() -> None:
    for model in AUDITED_MODELS:
        _execute(f"DROP TRIGGER IF EXISTS stress_write_audit ON {model._meta.db_table}")
    _execute(f"DROP TRIGGER IF EXISTS stress_fence_audit ON {ReconcilerState._meta.db_table}")
    _execute(
        "DROP TABLE IF EXISTS stress_write_audit, stress_fence_audit;"
        "DROP FUNCTION IF EXISTS stress_write_audit_fn(); DROP FUNCTION IF EXISTS stress_fence_audit_fn();"
    )


@dataclass(frozen=True)
class FenceAudit:
    """What the write audit saw: controller write transactions and fence violations."""

    write_transactions: int
    rows_written: int
    unfenced_transactions: list[int]
    stale_commits: list[tuple[str, int, int]]  # (controller, fence of the check, newer grant)
    grants: int
    checks: int


def fence_audit_read() -> FenceAudit:
    """Every controller write transaction must contain a fence check, and no grant newer than
    that check's fence may precede it (a grant waits for the check's row lock, so a later
    grant is always stamped after the check)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT txid), count(*) FROM stress_write_audit")
        write_transactions, rows_written = cursor.fetchone()
        cursor.execute(
            """
            SELECT DISTINCT w.txid FROM stress_write_audit w
             WHERE NOT EXISTS (SELECT 1 FROM stress_fence_audit f
                                WHERE f.txid = w.txid AND f.kind = 'check')
             ORDER BY 1 LIMIT 50
            """
        )
        unfenced = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            """
            SELECT c.controller, c.fence, min(g.fence) FROM stress_fence_audit c
              JOIN stress_fence_audit g
                ON g.controller = c.controller AND g.kind = 'grant' AND g.fence > c.fence AND g.at < c.at
             WHERE c.kind = 'check' AND c.txid IN (SELECT txid FROM stress_write_audit)
             GROUP BY c.id, c.controller, c.fence ORDER BY 1, 2 LIMIT 50
            """
        )
        stale = [(str(a), int(b), int(c)) for a, b, c in cursor.fetchall()]
        cursor.execute(
            "SELECT count(*) FILTER (WHERE kind = 'grant'), count(*) FILTER (WHERE kind = 'check')"
            " FROM stress_fence_audit"
        )
        grants, checks = cursor.fetchone()
    return FenceAudit(
        write_transactions=int(write_transactions),
        rows_written=int(rows_written),
        unfenced_transactions=unfenced,
        stale_commits=stale,
        grants=int(grants),
        checks=int(checks),
    )


def slow_deletes_install(seconds: float) -> None:
    """Make every DELETE statement on the audit log sleep first (one sleep per batch)."""
    table = AuditLog._meta.db_table
    _execute(
        f"""
        CREATE OR REPLACE FUNCTION stress_slow_delete_fn() RETURNS trigger AS $$
        BEGIN PERFORM pg_sleep({float(seconds)}); RETURN NULL; END $$ LANGUAGE plpgsql;
        DROP TRIGGER IF EXISTS stress_slow_delete ON {table};
        CREATE TRIGGER stress_slow_delete BEFORE DELETE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION stress_slow_delete_fn();
        """
    )


def slow_deletes_uninstall() -> None:
    _execute(
        f"DROP TRIGGER IF EXISTS stress_slow_delete ON {AuditLog._meta.db_table};"
        "DROP FUNCTION IF EXISTS stress_slow_delete_fn();"
    )
