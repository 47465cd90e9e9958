"""Batched writes through an index: every batch costs about the same as the first.

`update_in_batches` / `delete_in_batches` serve writes that take a row out of the
candidate set (an agent marked offline is no longer an online agent). Each batch is one
statement that picks and writes at once,
`UPDATE t SET ... WHERE <condition> AND id IN (SELECT id ... ORDER BY key, id LIMIT n)
RETURNING id`, so the ids never travel to Python and back, and the next batch simply
picks again from the head of the index. (A write that leaves its rows candidates, as
queue-priority's, walks key ranges instead: see that controller.)

On PostgreSQL the picked ids are matched with `id = ANY(ARRAY(SELECT ... LIMIT n))`, not
`id IN (SELECT ...)`: the planner cannot tell that the subquery yields only n rows, so
for IN it plans a hash semi-join that scans every row matching the outer condition, for
every batch (at a million rows, 100k candidates read again to write 5,000). An array
computed once makes the outer side n primary-key probes.

No walk keeps anything open between batches: no server-side cursor, no WITH HOLD cursor, no
session setting. Behind PgBouncer in transaction pooling each transaction may run on another
server connection (and `server_reset_query_always` discards whatever a session held), so
state that outlives a commit is gone by the next batch (design.md §5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from django.db import connections
from django.db.models import F, Func, Lookup, QuerySet, Value
from django.db.models.deletion import Collector
from django.db.models.lookups import GreaterThan
from django.db.models.sql import DeleteQuery, UpdateQuery

from reconcilers.runtime.contract import ReconcileContext

Rows = list[tuple[Any, ...]]  # what a batched write returns: (pk, *returning) per changed row
Tally = Callable[[Rows], Mapping[str, int]]  # a batch's changed rows -> rows per step, for ctx.tally


def tally_as(step: str) -> Tally:
    """Every row a batch changed counts for `step`."""
    return lambda rows: {step: len(rows)}


def update_in_batches(
    ctx: ReconcileContext,
    candidates: QuerySet[Any],
    key: str,
    size: int,
    values: Mapping[str, Any],
    *,
    step: str,
    nulls_first: bool = False,
    key_below: Any = None,
    picked_from: QuerySet[Any] | None = None,
    picked_field: str = "pk",
    sparse: bool = False,
) -> tuple[int, list[int]]:
    """UPDATE every row of `candidates` with `values`, one picked batch per fenced transaction.

    `values` must take a row out of `candidates`: that is what moves the next batch on.
    The batch is the first `size` rows in (key, id) order; with `nulls_first`, rows whose
    key is NULL go first (an agent marked online that never sent a heartbeat is the
    stalest of all). Such a condition (`key < x OR key IS NULL`) is no index range, so
    pass its bound as `key_below`: the walk over keyed rows then ends where the
    candidates do, instead of filtering the rest of the index for its last batch.
    The UPDATE re-checks the whole condition on each row, so a row that
    stopped matching since the statement's snapshot (a concurrent heartbeat, claim or
    report) is left alone.

    By default the batch is picked from `candidates` itself. `picked_from` picks it from
    another table instead (`picked_field` names the column holding the candidate's id),
    when that table's index finds the rows far more cheaply; its condition must imply
    the candidates', or the walk stops early at a batch that changes nothing.

    `sparse` is for candidates scattered through the index, or found by a join (jobs
    whose holder went offline, agents whose lease expired): re-picking from the head
    would rescan the non-matching rows, or redo the join, for every batch. The ids come
    instead from keyset pages: each page is one SELECT that resumes the (key, id) index
    walk just after the previous page's last row, so the pages together read the index
    once, and each batch's UPDATE re-checks the rows it was given.

    Each batch's rows are tallied for `step` in its transaction (ctx.tally). Returns the
    number of rows changed and their ids (for the DEBUG log).
    """
    rows = update_in_batches_returning(
        ctx,
        candidates,
        key,
        size,
        values,
        returning=(),
        tally=tally_as(step),
        nulls_first=nulls_first,
        key_below=key_below,
        picked_from=picked_from,
        picked_field=picked_field,
        sparse=sparse,
    )
    return len(rows), [row[0] for row in rows]


def update_in_batches_returning(
    ctx: ReconcileContext,
    candidates: QuerySet[Any],
    key: str,
    size: int,
    values: Mapping[str, Any],
    *,
    returning: tuple[str, ...],
    tally: Tally,
    nulls_first: bool = False,
    key_below: Any = None,
    picked_from: QuerySet[Any] | None = None,
    picked_field: str = "pk",
    sparse: bool = False,
) -> Rows:
    """`update_in_batches`, returning `(pk, *returning)` of every changed row, with the
    values the UPDATE wrote (for a step whose values depend on the row, e.g. a CASE);
    `tally` splits each batch's rows among the steps they count for."""
    return _walk(
        ctx,
        candidates if picked_from is None else picked_from,
        key,
        size,
        lambda picked: _update_returning(_picked_rows(candidates, picked), values, returning),
        tally,
        nulls_first=nulls_first,
        key_below=key_below,
        picked_field=picked_field,
        sparse=sparse,
    )


def delete_in_batches(
    ctx: ReconcileContext, candidates: QuerySet[Any], key: str, size: int, *, step: str
) -> tuple[int, list[int]]:
    """DELETE every row of `candidates`, one picked batch per fenced transaction, tallied for `step`."""

    def delete(picked: Any) -> Rows:
        return _delete_returning(_picked_rows(candidates, picked))

    rows = _walk(ctx, candidates, key, size, delete, tally_as(step))
    return len(rows), [pk for (pk,) in rows]


def _walk(
    ctx: ReconcileContext,
    source: QuerySet[Any],
    key: str,
    size: int,
    write: Callable[[Any], Rows],
    tally: Tally,
    *,
    nulls_first: bool = False,
    key_below: Any = None,
    picked_field: str = "pk",
    sparse: bool = False,
) -> Rows:
    """Pick batches of `picked_field` from `source` in batch order and `write` each one in
    its own fenced transaction, tallied there; returns what the writes returned."""

    def batch(picked: Any) -> Rows:
        with ctx.transaction():
            rows = write(picked)
            for step, count in tally(rows).items():
                ctx.tally(step, count)
        return rows

    written: Rows = []
    for head in _batch_heads(source, key, nulls_first, key_below):
        if sparse:
            for ids in _keyset_pages(head, key, picked_field, size):
                written.extend(batch(ids))
            continue
        picks = head.values_list(picked_field, flat=True)
        while True:
            rows = batch(picks[:size])
            written.extend(rows)
            # An empty batch ends the walk; one short of `size` does not, because a
            # concurrent writer may have taken rows out of an otherwise full batch.
            if not rows:
                break
    return written


def _keyset_pages(head: QuerySet[Any], key: str, picked_field: str, size: int) -> Iterator[list[Any]]:
    """`picked_field` of every row of `head` (ordered by key, id), `size` at a time.

    Each page is its own short SELECT, `... AND (key, id) > (last key, last id) ORDER BY
    key, id LIMIT size`: a range of the (key, id) index that starts where the last page
    ended, so a page costs the same wherever it lies, and nothing stays open between the
    pages (unlike a server-side cursor, which a commit behind a transaction pooler loses).
    A row that becomes a candidate behind the walk's position waits for the next run.
    """
    model = head.model
    key_field, pk_field = model._meta.get_field(key), model._meta.pk
    after: tuple[Any, Any] | None = None
    while True:
        page = head if after is None else head.filter(_after(key, key_field, pk_field, *after))
        rows = list(page.values_list(key, "pk", picked_field)[:size])
        if not rows:
            return
        yield [picked for _, _, picked in rows]
        if len(rows) < size:
            return
        after = rows[-1][0], rows[-1][1]


def _after(key: str, key_field: Any, pk_field: Any, last_key: Any, last_pk: Any) -> Lookup:
    """`(key, id) > (last_key, last_pk)` as one row comparison, an index range on (key, id).

    The NULL walk's key is NULL throughout, and NULL compares as unknown: there the
    position is the id alone (that walk is `key IS NULL` ordered by id).
    """
    if last_key is None:
        return GreaterThan(F("pk"), Value(last_pk, output_field=pk_field))
    return GreaterThan(
        _Row(F(key), F("pk"), output_field=key_field),
        _Row(
            Value(last_key, output_field=key_field),
            Value(last_pk, output_field=pk_field),
            output_field=key_field,
        ),
    )


class _Row(Func):
    """A row value, `(a, b)`: PostgreSQL and SQLite both compare rows column by column."""

    function = ""
    arity = 2


def _batch_heads(
    source: QuerySet[Any], key: str, nulls_first: bool, key_below: Any
) -> Iterator[QuerySet[Any]]:
    """`source` in batch order, as the one or two index walks that produce it.

    Both walks order by (key, id), the (key, id) index's own order: for the NULL walk the
    key is constant, and ordering by id alone would tempt the planner into the primary key.
    """
    if nulls_first:
        nulls = source.filter(**{f"{key}__isnull": True}).order_by(key, "pk")
        if _any_row(nulls):
            yield nulls
    yield _keyed(source, key, key_below).order_by(key, "pk")


def _keyed(source: QuerySet[Any], key: str, key_below: Any) -> QuerySet[Any]:
    """The rows of `source` with a key, as an index range when the bound is known."""
    if key_below is None:
        return source.filter(**{f"{key}__isnull": False})
    return source.filter(**{f"{key}__lt": key_below})


def _any_row(ordered: QuerySet[Any]) -> bool:
    """Whether `ordered` has a row, asked with its ORDER BY (unlike `exists()`).

    A NULL key is rare, but the planner cannot know that for a partial index (it sees
    the column's NULLs across the whole table) and may plan a full scan or hash join for
    a batch of them. With the index's own order and LIMIT 1 it takes the index: an
    empty NULL walk costs one index probe.
    """
    return bool(list(ordered.values_list("pk", flat=True)[:1]))


class _AnyOfSubquery(Lookup):
    """`lhs = ANY(ARRAY(subquery))` on PostgreSQL (see the module docstring), `lhs IN
    (subquery)` elsewhere (SQLite already probes the subquery's rows one by one)."""

    lookup_name = "any_of_subquery"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)  # "(SELECT ...)"
        template = "%s = ANY(ARRAY%s)" if connection.vendor == "postgresql" else "%s IN %s"
        return template % (lhs, rhs), [*lhs_params, *rhs_params]


def _picked_rows(candidates: QuerySet[Any], picked: QuerySet[Any] | list[Any]) -> QuerySet[Any]:
    """The rows of `candidates` whose id was picked: a batch subquery or a list of ids."""
    if isinstance(picked, QuerySet):
        return candidates.filter(_AnyOfSubquery(F("pk"), picked))
    return candidates.filter(pk__in=picked)


def _update_returning(queryset: QuerySet[Any], values: Mapping[str, Any], returning: tuple[str, ...]) -> Rows:
    """`queryset.update(**values)`, returning `(pk, *returning)` of the rows it changed."""
    query = cast(UpdateQuery, queryset.query.chain(UpdateQuery))
    query.add_update_values(dict(values))
    query.annotations = {}  # as QuerySet.update: filters are resolved, aliases must not reach the SQL
    sql, params = query.get_compiler(queryset.db).as_sql()
    return _execute_returning(queryset, sql, params, returning)


def _delete_returning(queryset: QuerySet[Any]) -> Rows:
    """`queryset.delete()` for a model nothing cascades from, returning `(pk,)` of the deleted rows."""
    if not Collector(using=queryset.db, origin=queryset).can_fast_delete(queryset):
        raise ValueError(f"{queryset.model.__name__} has cascades or delete signals: use QuerySet.delete()")
    query = queryset.query.chain(DeleteQuery)
    sql, params = query.get_compiler(queryset.db).as_sql()
    return _execute_returning(queryset, sql, params, ())


def _execute_returning(queryset: QuerySet[Any], sql: str, params: Any, returning: tuple[str, ...]) -> Rows:
    if not sql:
        return []
    connection = connections[queryset.db]
    meta = queryset.model._meta
    columns = [meta.pk.column, *(meta.get_field(name).column for name in returning)]
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {', '.join(map(connection.ops.quote_name, columns))}", params)
        return [tuple(row) for row in cursor.fetchall()]
