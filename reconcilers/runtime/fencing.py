"""Fencing tokens from the database: a grant per lock acquisition, checked in every write (design.md §4.4).

Once a newer holder has taken its token, an older holder can never commit again: each
of its write transactions ends with `UPDATE ... WHERE fence = :mine`, which matches no
row (and on PostgreSQL waits for, then sees, the newer grant) and so aborts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection
from django.db.models import F

from reconcilers.models import ReconcilerState
from reconcilers.runtime.contract import LockLostError


@dataclass(frozen=True)
class Grant:
    """One lock grant: its fencing token, the database time it was taken (the run's clock)
    and the too-soon anchor as it stood at that moment."""

    fence: int
    at: datetime
    last_real_started_at: datetime | None


def fence_grant(controller: str, holder: str) -> Grant:
    """Advance the controller's fencing token and read the database clock, in one statement.

    One `UPDATE ... RETURNING`: outside a transaction (as the runner calls it) it commits
    by itself before any work starts. The state row is created on the first grant.
    """
    grant = _grant_advance(controller, holder)
    if grant is None:
        ReconcilerState.objects.get_or_create(controller=controller)
        grant = _grant_advance(controller, holder)
        if grant is None:  # pragma: no cover - the row was just created
            raise RuntimeError(f"{controller}: no state row to fence")
    return grant


def _grant_advance(controller: str, holder: str) -> Grant | None:
    table = ReconcilerState._meta.db_table
    now_sql = (
        "clock_timestamp()"
        if connection.vendor == "postgresql"
        else "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET fence = fence + 1, lock_holder = %s, granted_at = {now_sql} "
            "WHERE controller = %s RETURNING fence, granted_at, last_real_started_at",
            [holder[:200], controller],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    fence, granted_at, anchor = row
    return Grant(fence=int(fence), at=_utc(granted_at), last_real_started_at=anchor and _utc(anchor))


def _utc(value: datetime | str) -> datetime:
    """A raw cursor's timestamp as an aware UTC datetime (SQLite returns text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fence_check(controller: str, fence: int) -> None:
    """Inside the caller's transaction: raise LockLostError unless `fence` is still the newest.

    The no-op UPDATE takes the state row's lock, so the check and the caller's commit
    are atomic with respect to a concurrent grant.
    """
    if not ReconcilerState.objects.filter(controller=controller, fence=fence).update(fence=F("fence")):
        raise LockLostError(f"{controller}: fencing token {fence} is no longer the newest grant")


def fence_current(controller: str) -> int:
    return ReconcilerState.objects.filter(controller=controller).values_list("fence", flat=True).first() or 0
