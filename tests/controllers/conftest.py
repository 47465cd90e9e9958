"""Drive a controller the way the runner does: fence grant, one database clock, dry-run rollback.

On PostgreSQL, through a real PgBouncer (transaction pooling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import pytest
from django.db import connection
from django.db.models import Model
from django.test.utils import CaptureQueriesContext

from controlplane.common.db import db_now
from reconcilers.registry import controller_get
from reconcilers.runtime.context import RunContext, reconcile_in_context
from reconcilers.runtime.contract import ReconcileResult
from reconcilers.runtime.fencing import fence_grant

RunController = Callable[..., ReconcileResult]


@pytest.fixture(autouse=True, scope="module")
def _controllers_through_pgbouncer(through_pgbouncer: Any) -> None:
    """On PostgreSQL every controller test runs through a real PgBouncer in transaction
    pooling, the production topology of several worker hosts (tests/pgbouncer.py)."""


def run_context(
    name: str,
    *,
    dry_run: bool = False,
    ignore_brake: bool = False,
    now: datetime | None = None,
    fence: int | None = None,
    params: Any = None,
    **overrides: Any,
) -> RunContext:
    controller = controller_get(name)
    return RunContext(
        controller=name,
        now=now or db_now(),
        fence=fence if fence is not None else fence_grant(name, "test").fence,
        params=params if params is not None else controller.validate_params(overrides),
        dry_run=dry_run,
        ignore_brake=ignore_brake,
    )


@pytest.fixture
def run_controller(db: Any) -> RunController:
    """run_controller(name, dry_run=False, ignore_brake=False, now=None, fence=None, **params)."""

    def run(name: str, **kwargs: Any) -> ReconcileResult:
        ctx = run_context(name, **kwargs)
        return reconcile_in_context(controller_get(name), ctx)

    return run


def table_snapshot(*models: type[Model]) -> dict[str, list[dict[str, Any]]]:
    """Every column of every row, for before/after comparisons of dry runs."""
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in models}


def count_queries(func: Callable[[], Any]) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        func()
    return len(captured.captured_queries), [q["sql"] for q in captured.captured_queries]


def ids(rows: Iterable[Model]) -> list[int]:
    return sorted(int(row.pk) for row in rows)
