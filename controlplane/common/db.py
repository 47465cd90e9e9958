"""Database helpers shared by services and controllers: the database clock, vendor checks and
the prepared-statement cursor of the agent API's hottest statements."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.utils import CursorWrapper
from django.db.models import Q

log = logging.getLogger(__name__)

# psycopg prepares nothing on a connection whose prepare_threshold is None (Django's default,
# kept for PgBouncer). The prepared cursor below asks for preparation explicitly, so on a
# direct connection the threshold only has to be a number that nothing else reaches: Django's
# own cursors bind on the client side and never prepare, whatever the threshold.
_PREPARE_ONLY_WHEN_ASKED = 2**31 - 1

# Set once a prepared statement vanished from its server session: this process then prepares
# nothing more (see PreparingCursor.execute).
_prepared_statements_vanished = False


def db_now() -> datetime:
    """Return the database server's current time as an aware UTC datetime.

    Every writer (heartbeats, claims, controllers) uses the database clock, never a
    worker's clock, so that comparisons across hosts cannot be skewed.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT clock_timestamp()")
            value = cursor.fetchone()[0]
            return value.astimezone(UTC)
        cursor.execute("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
        return datetime.fromisoformat(cursor.fetchone()[0]).replace(tzinfo=UTC)


def connection_recover() -> None:
    """Outside any transaction, drop this thread's connection if the server closed it (a
    terminated backend, a restart), so the next query opens a new one.

    Django does this around requests and Celery around tasks; a long-lived thread of our own
    (the in-process manager) must do it itself, or every later query fails on the dead
    connection.
    """
    if connection.in_atomic_block or connection.connection is None:
        return
    if connection.errors_occurred and not connection.is_usable():
        connection.close()


def session_state_kept(db: Any = connection) -> bool:
    """Whether what a session holds (a setting, a prepared statement) outlives the transaction
    on `db`: on PostgreSQL reached directly. Behind PgBouncer in transaction pooling
    (DATABASE_POOL=pgbouncer) the next transaction may run on another server connection."""
    return bool(db.vendor == "postgresql" and settings.DATABASE_POOL != "pgbouncer")


@contextmanager
def prepared_cursor() -> Iterator[CursorWrapper]:
    """A cursor whose statements PostgreSQL parses and plans once per connection.

    For the agent API's per-request statements (the key lookup, the heartbeat): binding the
    parameters on the server and preparing the statement cut PostgreSQL's CPU per heartbeat
    by about a third (0.43 -> 0.28 ms, measured), and skip psycopg's client-side quoting. A
    prepared statement lives on its server connection, so behind PgBouncer in transaction
    pooling (DATABASE_POOL=pgbouncer), and on SQLite, this is Django's ordinary cursor. Same
    wrapping as Django's own cursors: errors map to django.db's, and query capture (tests,
    DEBUG) sees every statement. Only for statements whose text is fixed (parameters as %s):
    each distinct text takes a slot in psycopg's per-connection cache of 100 statements.
    A migration that changes the type of a column such a statement returns makes its prepared
    plan fail on connections opened before it ("cached plan must not change result type"):
    restart the web processes with the new code, as any deploy does. Behind a pooler that was
    not declared (PgBouncer without DATABASE_POOL=pgbouncer), a prepared statement vanishes
    with its server connection: the first statement that finds its name gone is run again
    unprepared when no transaction is open (nothing ran the first time), an error is logged
    naming the setting, and this process prepares nothing more.
    """
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy looks it up again
    if not session_state_kept(db) or _prepared_statements_vanished:
        with db.cursor() as cursor:
            yield cursor
        return
    db.close_if_health_check_failed()
    db.ensure_connection()
    raw = db.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = _PREPARE_ONLY_WHEN_ASKED
    db.validate_thread_sharing()
    with db.wrap_database_errors:
        psycopg_cursor = _preparing_cursor_class()(raw)
    make = db.make_debug_cursor if db.queries_logged else db.make_cursor
    with make(psycopg_cursor) as cursor:
        yield cursor


@cache
def _preparing_cursor_class() -> type:
    """Django's server-binding psycopg cursor, preparing every statement it runs (imported on
    first use: the PostgreSQL backend needs psycopg, which SQLite installs need not load)."""
    # Defined only when psycopg 3 is installed, so the stubs do not know it.
    from django.db.backends.postgresql.base import ServerBindingCursor  # type: ignore[attr-defined]
    from psycopg import errors
    from psycopg.pq import TransactionStatus

    class PreparingCursor(ServerBindingCursor):
        def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, **kw: Any) -> Any:
            try:
                return super().execute(query, params, prepare=True, **kw)
            except errors.InvalidSqlStatementName:
                _prepared_statements_forget(self.connection)
                if self.connection.info.transaction_status != TransactionStatus.IDLE:
                    raise  # the open transaction is aborted: the caller's error to handle
                return super().execute(query, params, prepare=False, **kw)

        def _send_query_prepared(self, name: bytes, pgq: Any, **kw: Any) -> None:
            # psycopg records the statement it ran (`_query`, which Django's query log reads)
            # only when it sends the text; a prepared statement is sent by name.
            self._query = pgq
            super()._send_query_prepared(name, pgq, **kw)

    return PreparingCursor


def _prepared_statements_forget(raw: Any) -> None:
    global _prepared_statements_vanished
    if not _prepared_statements_vanished:
        log.error(
            "a prepared statement vanished from its database session: is PostgreSQL behind a pooler "
            "(PgBouncer)? Set DATABASE_POOL=pgbouncer; this process prepares no more statements"
        )
    _prepared_statements_vanished = True
    raw.prepare_threshold = None  # psycopg stops using the names it prepared on this connection


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def choices_check(field: str, choices: type) -> Q:
    """A Q for a CHECK constraint that mirrors a TextChoices enum in the database."""
    return Q(**{f"{field}__in": [c.value for c in choices]})  # type: ignore[attr-defined]
