"""Fencing tokens from the database: a grant per lock acquisition, checked in every write.

Once a newer holder has taken its token, an older holder can never commit again: each
of its write transactions ends with `UPDATE ... WHERE fence = :mine`, which matches no
row (and on PostgreSQL waits for, then sees, the newer grant) and so aborts.
"""

from __future__ import annotations

from django.db import connection, transaction
from django.db.models import F

from reconcilers.models import ReconcilerState
from reconcilers.runtime.contract import LockLostError


def fence_grant(controller: str, holder: str) -> int:
    """Advance and return the controller's fencing token, in its own committed transaction."""
    ReconcilerState.objects.get_or_create(controller=controller)
    table = ReconcilerState._meta.db_table
    now_sql = (
        "clock_timestamp()"
        if connection.vendor == "postgresql"
        else "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET fence = fence + 1, lock_holder = %s, granted_at = {now_sql} "
            "WHERE controller = %s RETURNING fence",
            [holder[:200], controller],
        )
        return int(cursor.fetchone()[0])


def fence_check(controller: str, fence: int) -> None:
    """Inside the caller's transaction: raise LockLostError unless `fence` is still the newest.

    The no-op UPDATE takes the state row's lock, so the check and the caller's commit
    are atomic with respect to a concurrent grant.
    """
    if not ReconcilerState.objects.filter(controller=controller, fence=fence).update(fence=F("fence")):
        raise LockLostError(f"{controller}: fencing token {fence} is no longer the newest grant")


def fence_current(controller: str) -> int:
    return ReconcilerState.objects.filter(controller=controller).values_list("fence", flat=True).first() or 0
