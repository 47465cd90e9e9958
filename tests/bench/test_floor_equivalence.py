"""The benchmark's floor SQL and each controller make the same change on the same data.

This keeps the benchmark honest (the floor is the same work, not less) and cross-checks
every controller against an independent one-statement-per-step formulation of design.md
§5, on the benchmark generator's mixed data.
"""

from __future__ import annotations

import pytest

from bench.floors import FLOORS
from bench.generate import TABLES_FOR, Sizes, bench_configure, generate
from controlplane.common.db import db_now
from reconcilers.services import run_controller

pytestmark = pytest.mark.bench

TINY = Sizes(agents=2000, commands=2000, pending_platform_jobs=400, tokens=400, audit_logs=1000)


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("controller", list(FLOORS))
def test_controller_changes_what_the_floor_changes(controller: str, redis_client: object) -> None:
    bench_configure(controller)
    generate(TINY, TABLES_FOR[controller])
    summary = run_controller(controller, force=True, trigger="test")
    assert summary.outcome == "success", summary

    generate(TINY, TABLES_FOR[controller])
    floor_steps = FLOORS[controller](db_now())

    assert dict(summary.steps) == floor_steps
    assert summary.items > 0  # the data set gives every controller work


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_rows_created_after_the_generator_get_new_ids() -> None:
    """The generator inserts explicit ids; what runs next on the database (the heartbeat
    benchmark after `make bench`) must still be able to insert tenants, agents and tokens."""
    from controlplane.tenants.models import Tenant

    generate(TINY, ("agents", "commands", "tokens"))
    tenant = Tenant.objects.create(name="after-generate")
    assert tenant.pk > 1
