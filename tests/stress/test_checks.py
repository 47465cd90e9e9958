"""The suite's own invariant checks, property-tested against brute force so a green
`make stress` cannot come from a check that misses what it looks for."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from controlplane.agents.models import Agent
from reconcilers.models import ReconcilerState
from stress import checks, db

pytestmark = pytest.mark.stress

T0 = datetime(2026, 1, 1, tzinfo=UTC)

RUNS = st.lists(
    st.builds(
        lambda name, start, length, outcome, forced, fence: checks.RunRow(
            controller=name,
            started_at=T0 + timedelta(milliseconds=start),
            finished_at=T0 + timedelta(milliseconds=start + length),
            outcome=outcome,
            reason="" if outcome == "success" else "locked",
            dry_run=False,
            forced=forced,
            fence=fence,
        ),
        st.sampled_from(["a", "b"]),
        st.integers(0, 20_000),
        st.integers(0, 3_000),
        st.sampled_from(["success", "success", "skipped"]),
        st.booleans(),
        st.integers(1, 40),
    ),
    max_size=25,
)


@hsettings(max_examples=200, deadline=None)
@given(runs=RUNS)
def test_overlaps_finds_a_pair_exactly_when_two_successful_ranges_intersect(
    runs: list[checks.RunRow],
) -> None:
    found = checks.overlaps(runs)
    ok = [r for r in runs if r.real_success]
    brute = any(
        a is not b
        and a.controller == b.controller
        and a.started_at < b.finished_at
        and b.started_at < a.finished_at
        for i, a in enumerate(ok)
        for b in ok[i + 1 :]
    )
    # Zero-length runs touching at one instant are not an overlap for either side.
    assert bool(found) == brute


@hsettings(max_examples=200, deadline=None)
@given(runs=RUNS)
def test_too_close_starts_flags_only_unforced_consecutive_starts_under_the_gap(
    runs: list[checks.RunRow],
) -> None:
    found = checks.too_close_starts(runs, {"a": 2.0, "b": 1.0}, 0.5)
    for earlier, later in found:
        assert earlier.controller == later.controller
        assert not later.forced
        assert (later.started_at - earlier.started_at).total_seconds() < {"a": 1.0, "b": 0.5}[
            later.controller
        ]
    ok = sorted(
        (r for r in runs if r.real_success), key=lambda r: (r.controller, r.started_at, r.finished_at)
    )
    expected = sum(
        1
        for a, b in itertools.pairwise(ok)
        if a.controller == b.controller
        and not b.forced
        and (b.started_at - a.started_at).total_seconds() < {"a": 1.0, "b": 0.5}[b.controller]
    )
    assert len(found) == expected


def test_fence_regressions_and_shared_fences_are_reported() -> None:
    def run(start: int, fence: int, outcome: str = "success") -> checks.RunRow:
        at = T0 + timedelta(seconds=start)
        return checks.RunRow("a", at, at, outcome, "", False, False, fence)

    assert checks.fence_regressions([run(0, 1), run(1, 2), run(2, 5)]) == []
    assert len(checks.fence_regressions([run(0, 3), run(1, 2)])) == 1
    assert len(checks.fence_regressions([run(0, 3), run(1, 3, "error")])) == 1


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_write_audit_reports_unfenced_and_stale_controller_writes(make_agent: Any) -> None:
    """The instrument behind 'no write with a stale fence': a controller-process write with
    no fence check, and one whose check ran after a newer grant, are both reported."""
    agent = make_agent()
    state = ReconcilerState._meta.db_table
    ReconcilerState.objects.create(controller="probe", fence=1)
    db.write_audit_install()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET application_name = %s", [db.WORKER_APP_PREFIX])
            with transaction.atomic():  # fenced and current: fine
                Agent.objects.filter(pk=agent.pk).update(name="fenced")
                cursor.execute(f"UPDATE {state} SET fence = fence WHERE controller = 'probe' AND fence = 1")
            clean = db.fence_audit_read()
            with transaction.atomic():  # no fence check at all
                Agent.objects.filter(pk=agent.pk).update(name="unfenced")
            cursor.execute(f"UPDATE {state} SET fence = fence + 1 WHERE controller = 'probe'")  # grant 2
            with transaction.atomic():  # a check with fence 1 after grant 2 (a fence that went back)
                Agent.objects.filter(pk=agent.pk).update(name="stale")
                cursor.execute(f"UPDATE {state} SET fence = 1 WHERE controller = 'probe'")
            dirty = db.fence_audit_read()
            cursor.execute("RESET application_name")
    finally:
        db.write_audit_uninstall()
    assert clean.unfenced_transactions == []
    assert clean.stale_commits == []
    assert clean.write_transactions == 1
    assert len(dirty.unfenced_transactions) == 1
    assert dirty.stale_commits == [("probe", 1, 2)]


def test_first_traceback_quotes_the_line_that_logged_it_and_what_follows() -> None:
    from stress.base import first_traceback, traceback_count

    log = (
        "[INFO] beat: Starting...\n"
        "[ERROR] Database error while sync: OperationalError('gone')\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in sync\n'
        "psycopg.OperationalError: gone\n"
        "[ERROR] again\n"
        "Traceback (most recent call last):\n"
        "KeyError: 'second'\n"
    )
    first = first_traceback(log)
    assert traceback_count(log) == 2
    assert first.startswith("[ERROR] Database error while sync")
    assert "psycopg.OperationalError: gone" in first
    assert first_traceback("[INFO] all well\n") == ""
