"""Keyset batches through an index: every batch costs the same as the first.

OFFSET pagination and "re-select the first N matching rows" both rescan what earlier
batches passed over; a keyset on (key, id) resumes exactly where the last batch ended.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.db.models import Q, QuerySet

from reconcilers.runtime.contract import ReconcileContext


def keyset_rows(
    queryset: QuerySet[Any], key: str, size: int, *, fields: tuple[str, ...] = (), nulls_first: bool = False
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield lists of at most `size` rows `(pk, *fields)` of `queryset`, in (key, id) order.

    The caller updates or deletes each batch (re-checking its condition in the WHERE
    clause) before asking for the next one; rows already passed are never read again.
    With `nulls_first`, rows whose key is NULL come first, in id order (e.g. an agent
    marked online that never sent a heartbeat is the stalest of all).
    """
    if nulls_first:
        last_id = 0
        while True:
            rows = list(
                queryset.filter(**{f"{key}__isnull": True}, pk__gt=last_id)
                .order_by("pk")
                .values_list("pk", *fields)[:size]
            )
            if rows:
                yield rows
                last_id = rows[-1][0]
            if len(rows) < size:
                break
    position: tuple[Any, int] | None = None
    while True:
        page = queryset.filter(**{f"{key}__isnull": False})
        if position is not None:
            value, pk = position
            # The redundant `key >= value` is the sargable bound that lets the index seek.
            page = page.filter(
                Q(**{f"{key}__gt": value}) | Q(**{key: value, "pk__gt": pk}), **{f"{key}__gte": value}
            )
        keyed = list(page.order_by(key, "pk").values_list(key, "pk", *fields)[:size])
        if keyed:
            yield [row[1:] for row in keyed]
            position = (keyed[-1][0], keyed[-1][1])
        if len(keyed) < size:
            return


def keyset_batches(
    queryset: QuerySet[Any], key: str, size: int, *, nulls_first: bool = False
) -> Iterator[list[int]]:
    """Like `keyset_rows`, yielding only the primary keys."""
    for rows in keyset_rows(queryset, key, size, nulls_first=nulls_first):
        yield [row[0] for row in rows]


def update_in_batches(
    ctx: ReconcileContext,
    candidates: QuerySet[Any],
    key: str,
    size: int,
    values: Mapping[str, Any],
    *,
    nulls_first: bool = False,
) -> tuple[int, list[int]]:
    """Conditionally UPDATE every row of `candidates`, one keyset batch per fenced transaction.

    `candidates` carries the whole condition; it is applied again in the UPDATE's WHERE
    clause (`pk IN batch AND condition`), so a row that stopped matching since it was
    read (a concurrent heartbeat, claim or report) is left alone. Returns the number of
    rows changed and the ids of the batches (for the DEBUG log).
    """
    changed, seen = 0, []
    for ids in keyset_batches(candidates, key, size, nulls_first=nulls_first):
        with ctx.transaction():
            changed += candidates.filter(pk__in=ids).update(**values)
        seen.extend(ids)
    return changed, seen


def delete_in_batches(
    ctx: ReconcileContext, candidates: QuerySet[Any], key: str, size: int
) -> tuple[int, list[int]]:
    """Conditionally DELETE every row of `candidates`, one keyset batch per fenced transaction."""
    deleted, seen = 0, []
    for ids in keyset_batches(candidates, key, size):
        with ctx.transaction():
            deleted += candidates.filter(pk__in=ids).delete()[0]
        seen.extend(ids)
    return deleted, seen
