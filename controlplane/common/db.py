"""Database helpers shared by services and controllers: the database clock and vendor checks."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection
from django.db.models import Q


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


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def choices_check(field: str, choices: type) -> Q:
    """A Q for a CHECK constraint that mirrors a TextChoices enum in the database."""
    return Q(**{f"{field}__in": [c.value for c in choices]})  # type: ignore[attr-defined]
