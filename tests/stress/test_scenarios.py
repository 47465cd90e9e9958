"""The stress scenarios, shortened for `make test` (`make stress` runs them at full length).

Each starts real processes (Celery workers and beats, runcontrollers, redis-server) against
the test database, so they need PostgreSQL (the triggers of the write audit, concurrent
sessions) and are marked slow.
"""

from __future__ import annotations

from typing import Any

import pytest

from stress import exactly_once, failover, heartbeat_race, kill, outage
from stress.base import StressEnv
from tests.stress.conftest import assert_held

pytestmark = [
    pytest.mark.stress,
    pytest.mark.slow,
    pytest.mark.postgres_only,
    pytest.mark.django_db(transaction=True),
]


def test_exactly_once_across_four_worker_processes_and_two_beats(stress_env: StressEnv) -> None:
    report = exactly_once.run(stress_env, duration=15, forced_every=5)
    assert_held(report)
    # Not vacuous: both beats delivered (duplicates were refused) and the audit saw fenced writes.
    skipped: dict[str, Any] = report.figures["skipped_by_reason"]
    assert skipped.get("too_soon", 0) + skipped.get("locked", 0) > 0
    assert report.figures["controller_write_transactions"] > 0


def test_sigkill_sigstop_and_terminated_connection_mid_run(stress_env: StressEnv) -> None:
    report = kill.run(stress_env, rows_per_phase=2500)
    assert_held(report)
    assert report.figures["sigstop_faulted_run"] == "error:lock_lost"
    assert report.figures["old_rows_deleted"] == 3 * 2500


def test_redis_outage_and_terminated_connections_under_runcontrollers(stress_env: StressEnv) -> None:
    report = outage.run(stress_env, outage_seconds=5, settle_seconds=5)
    assert_held(report)
    assert report.figures["successes_while_redis_down"] == 0


def test_heartbeats_just_inside_the_timeout_never_lose_to_the_sweep(stress_env: StressEnv) -> None:
    report = heartbeat_race.run(stress_env, duration=12)
    assert_held(report)
    assert report.figures["samples"] > 50


def test_sentinel_failover_mid_run_costs_at_most_a_skipped_run(stress_env: StressEnv) -> None:
    report = failover.run(stress_env, settle_seconds=4)
    assert_held(report)
    # Not vacuous: the failover happened while a run held its lock, and fenced writes were audited.
    assert report.figures["interrupted_run"] != "no row"
    assert report.figures["master"].split(" -> ")[0] != report.figures["master"].split(" -> ")[1]
    assert report.figures["controller_write_transactions"] > 0
    assert report.figures["overlaps"] == 0
    assert report.figures["stale_fence_commits"] == 0
