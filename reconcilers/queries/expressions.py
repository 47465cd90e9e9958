"""Portable clock arithmetic for set-based UPDATEs, exact to the microsecond on both databases.

The ORM has no portable "seconds between two timestamps": PostgreSQL subtracts to an
interval and SQLite stores text. Both expressions below yield an integer number of
microseconds (PostgreSQL 14+ EXTRACT returns an exact numeric; SQLite uses Django's own
`django_timestamp_diff`), so floors and thresholds agree with the Python reference to
the microsecond instead of drifting with float rounding.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import BigIntegerField, DateTimeField, Expression, F, Func, Model, Value
from django.db.models.functions import Greatest
from django.db.models.sql import Query

MICROSECONDS_PER_MINUTE = 60_000_000


class MicrosecondsSince(Func):
    """Integer microseconds from `field` to `now` (positive when `field` is earlier)."""

    output_field = BigIntegerField()
    arity = 2

    def __init__(self, now: datetime, field: str | Expression, **extra: Any) -> None:
        target = F(field) if isinstance(field, str) else field
        super().__init__(Value(now, output_field=DateTimeField()), target, **extra)

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="(EXTRACT(EPOCH FROM (%(expressions)s)) * 1000000)::bigint",
            arg_joiner=" - ",
            **extra_context,
        )

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(
            compiler, connection, function="django_timestamp_diff", arg_joiner=", ", **extra_context
        )


def wait_minutes_expression(now: datetime, field: str = "queued_at") -> Expression:
    """Whole minutes from `field` to `now`, floored, never negative (see commands.priority)."""
    # Integer division truncates toward zero on both databases; negative waits are then
    # clamped to 0, which is also what floor-then-clamp gives, so the result is exact.
    return Greatest(
        Value(0),
        MicrosecondsSince(now, field) / Value(MICROSECONDS_PER_MINUTE),
        output_field=BigIntegerField(),
    )


def expression_sql(model: type[Model], expression: Expression) -> tuple[str, list[Any]]:
    """Compile an ORM expression over `model`'s table to SQL for the current database, for
    the few statements the ORM cannot write (an UPDATE joined to a list of values)."""
    query = Query(model)
    compiler = query.get_compiler(connection=connection)
    sql, params = compiler.compile(expression.resolve_expression(query))
    return sql, list(params)
