"""A lock holder is renewed only while its run is alive (design.md §4.4): progress stamps, the
bound, the run's session timeouts, and how a stuck or interrupted run ends."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, ClassVar

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError, connection, transaction

from reconcilers.models import ReconcileRun
from reconcilers.runtime import liveness
from reconcilers.runtime.contract import Controller, ReconcileContext, ReconcileResult
from reconcilers.runtime.liveness import (
    Progress,
    idle_in_transaction_timeout_seconds,
    progress_bound_seconds,
    session_timeouts_apply,
    statement_timeout_seconds,
)
from reconcilers.runtime.lock import LockRenewer, lock_acquire
from reconcilers.schedule import schedule_sync
from reconcilers.services import config_update, run_controller
from reconcilers.testing import controllers_installed
from tests.runtime.controllers import Sleeper

ORPHAN_LOCK_KEY = 2323  # advisory lock key of the orphaned-session test


class Stall(Controller):
    """In a thread named stuck*, shows no sign of life (no round trip, no checkpoint) for
    `stall_seconds`, then returns: a main thread stuck on a dead socket that comes back."""

    name = "test-stall"
    default_interval_seconds = 60
    step_names = ("written",)
    stall_seconds: ClassVar[float] = 0.0
    entered = threading.Event()

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        if threading.current_thread().name.startswith("stuck"):
            type(self).entered.set()
            time.sleep(type(self).stall_seconds)
        return self.result(written=0)


class Probe(Controller):
    """Reads its own session's timeouts while it runs."""

    name = "test-probe"
    default_interval_seconds = 60
    step_names = ("written",)
    seen: ClassVar[dict[str, str]] = {}

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        type(self).seen.update(_timeouts())
        return self.result(written=0)


class BatchProbe(Controller):
    """Reads its session's timeouts outside and inside one of its batch transactions."""

    name = "test-batch-probe"
    default_interval_seconds = 60
    step_names = ("written",)
    outside: ClassVar[dict[str, str]] = {}
    inside: ClassVar[dict[str, str]] = {}

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        type(self).outside.update(_timeouts())
        with ctx.transaction():
            type(self).inside.update(_timeouts())
        return self.result(written=0)


class SoftLimited(Controller):
    """Celery's soft time limit fires while the driver waits for a statement's result."""

    name = "test-soft-limited"
    default_interval_seconds = 60
    step_names = ("written",)

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        def soft_limit(signum: int, frame: FrameType | None) -> None:
            raise SoftTimeLimitExceeded()

        previous = signal.signal(signal.SIGALRM, soft_limit)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(3)")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return self.result(written=0)


def _timeouts() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        statement, lock, idle = cursor.fetchone()
    return {"statement_timeout": statement, "lock_timeout": lock, "idle_in_transaction": idle}


@pytest.fixture
def local_controllers(db: Any, redis_client: redis.Redis) -> Iterator[None]:
    Stall.entered.clear()
    Probe.seen.clear()
    BatchProbe.outside.clear()
    BatchProbe.inside.clear()
    with controllers_installed(Stall, Probe, BatchProbe, SoftLimited):
        schedule_sync([Stall.name, Probe.name, BatchProbe.name, SoftLimited.name])
        yield


@pytest.fixture
def tight_bound(monkeypatch: pytest.MonkeyPatch, settings: Any) -> float:
    """A lock TTL of 0.6 s and no margin: the bound is the 1 s statement timeout floor."""
    settings.RECONCILERS_LOCK_TTL_SECONDS = 0.6
    monkeypatch.setattr(liveness, "PROGRESS_MARGIN_SECONDS", 0.0)
    return progress_bound_seconds(0.6)


def test_the_bound_is_the_statement_timeout_plus_a_margin() -> None:
    assert statement_timeout_seconds(30) == 29
    assert progress_bound_seconds(30) == 29 + liveness.PROGRESS_MARGIN_SECONDS
    assert idle_in_transaction_timeout_seconds(30) == 20
    # A holder cut off mid-batch: its server session (one statement, then idle in its
    # transaction) ends before the lock's last renewal can expire, for any allowed TTL.
    for ttl in (3, 5, 30, 300, 3600):
        renewal_period = ttl / 3
        earliest_expiry = progress_bound_seconds(ttl) - renewal_period + ttl
        assert statement_timeout_seconds(ttl) + idle_in_transaction_timeout_seconds(ttl) < earliest_expiry


@pytest.mark.django_db
def test_every_round_trip_and_checkpoint_stamps_progress() -> None:
    now = [100.0]
    progress = Progress(5.0, clock=lambda: now[0])
    now[0] = 200.0
    assert progress.stalled()
    with progress.watching(), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert progress.last == 200.0
    assert not progress.stalled()
    now[0] = 206.0
    assert progress.stalled_seconds() == 6.0
    with connection.cursor() as cursor:  # outside watching(): not the run's statements
        cursor.execute("SELECT 1")
    assert progress.last == 200.0
    assert not progress.interrupted


def test_the_renewal_stops_for_a_run_without_progress_and_the_lock_expires(
    redis_client: redis.Redis,
) -> None:
    held = lock_acquire("liveness-stuck", ttl_seconds=0.6)
    alive = lock_acquire("liveness-alive", ttl_seconds=0.6)
    assert held is not None
    assert alive is not None
    stuck_lost, alive_lost = threading.Event(), threading.Event()
    stuck, living = Progress(0.3), Progress(0.3)
    renewers = [LockRenewer(held, stuck_lost, stuck).start(), LockRenewer(alive, alive_lost, living).start()]
    try:
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:  # three TTLs: only the living run shows progress
            living.stamp()
            time.sleep(0.05)
        assert stuck_lost.is_set()
        assert not redis_client.exists(held.key)  # not renewed: expired
        assert not alive_lost.is_set()
        assert redis_client.get(alive.key) == alive.token.encode()
    finally:
        for renewer in renewers:
            renewer.stop()
        alive.release()


@pytest.mark.django_db(transaction=True)
def test_a_stuck_run_is_taken_over_and_ends_lock_lost_never_success(
    local_controllers: None, tight_bound: float
) -> None:
    Stall.stall_seconds = tight_bound + 0.6 + 1.5
    out: list[Any] = []

    def stuck_holder() -> None:
        try:
            out.append(run_controller(Stall.name, trigger="test"))
        finally:
            connection.close()

    thread = threading.Thread(target=stuck_holder, name="stuck-holder")
    thread.start()
    assert Stall.entered.wait(10)
    entered = time.monotonic()
    successor = run_controller(Stall.name, force=True, trigger="test")
    while successor.outcome != "success" and time.monotonic() - entered < 10:
        assert successor.reason == "locked", successor
        time.sleep(0.05)
        successor = run_controller(Stall.name, force=True, trigger="test")
    taken_after = time.monotonic() - entered
    assert successor.outcome == "success"
    assert taken_after <= tight_bound + 0.6 + 0.5  # bound + TTL, plus a loaded machine's slack
    thread.join(30)

    stuck = out[0]
    assert (stuck.outcome, stuck.reason) == ("error", "lock_lost")
    assert "lock renewal stopped" in stuck.error_text
    row = ReconcileRun.objects.get(pk=stuck.run_id)
    assert (row.outcome, row.reason) == ("error", "lock_lost")
    assert successor.fence is not None
    assert stuck.fence is not None
    assert stuck.fence < successor.fence


@pytest.mark.django_db(transaction=True)
def test_a_run_that_stalls_past_its_bound_ends_lock_lost_even_when_nobody_took_over(
    local_controllers: None, tight_bound: float
) -> None:
    Stall.stall_seconds = tight_bound + 1.0
    out: list[Any] = []

    def stuck_holder() -> None:
        try:
            out.append(run_controller(Stall.name, trigger="test"))
        finally:
            connection.close()

    thread = threading.Thread(target=stuck_holder, name="stuck-alone")
    thread.start()
    thread.join(30)
    assert (out[0].outcome, out[0].reason) == ("error", "lock_lost")


@pytest.mark.django_db(transaction=True)
def test_a_healthy_run_that_checkpoints_keeps_its_lock_past_the_bound(
    tight_bound: float, test_controllers: Any
) -> None:
    config_update(Sleeper.name, {"params": {"hold_seconds": tight_bound + 1.5}}, actor="user:test")
    out: list[Any] = []

    def holder() -> None:
        try:
            out.append(run_controller(Sleeper.name, trigger="test"))
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(tight_bound + 0.8)  # past the bound and past a TTL
    contender = run_controller(Sleeper.name, force=True, trigger="test")
    thread.join(30)
    assert contender.reason == "locked"
    assert out[0].outcome == "success", out[0].error_text


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_a_run_bounds_its_session_and_gives_the_connection_back(
    local_controllers: None, settings: Any
) -> None:
    settings.RECONCILERS_LOCK_TTL_SECONDS = 6
    before = _timeouts()
    summary = run_controller(Probe.name, trigger="test")
    assert summary.outcome == "success", summary.error_text
    assert Probe.seen == {"statement_timeout": "5s", "lock_timeout": "5s", "idle_in_transaction": "4s"}
    assert _timeouts() == before


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)  # each batch a real transaction, as in production
def test_behind_pgbouncer_each_batch_bounds_itself_and_the_session_is_left_alone(
    local_controllers: None, settings: Any
) -> None:
    """In transaction pooling a session setting would land on whichever server connection ran
    that statement, then on another client: the run sets none, and every batch transaction
    carries all three timeouts itself (SET LOCAL)."""
    settings.RECONCILERS_LOCK_TTL_SECONDS = 6
    settings.DATABASE_POOL = "pgbouncer"
    before = _timeouts()
    summary = run_controller(BatchProbe.name, trigger="test")
    assert summary.outcome == "success", summary.error_text
    assert BatchProbe.outside == before
    assert BatchProbe.inside == {"statement_timeout": "5s", "lock_timeout": "5s", "idle_in_transaction": "4s"}
    assert _timeouts() == before


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_server_ends_a_run_session_left_idle_in_its_transaction() -> None:
    """A holder cut off mid-batch leaves its session idle in a transaction, holding locks: the
    server ends it after the idle timeout (2 s for a 3 s TTL), and the locks go with it."""
    held = threading.Event()
    pid: list[int] = []
    errors: list[Exception] = []

    def orphan() -> None:
        try:
            session_timeouts_apply(3)
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid(), pg_advisory_xact_lock(%s)", [ORPHAN_LOCK_KEY])
                    pid.append(cursor.fetchone()[0])
                held.set()
                time.sleep(idle_in_transaction_timeout_seconds(3) + 1.5)  # the network is gone
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
        except DatabaseError as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=orphan)
    thread.start()
    assert held.wait(10)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ORPHAN_LOCK_KEY])
        assert cursor.fetchone()[0] is False  # held by the open transaction
        time.sleep(idle_in_transaction_timeout_seconds(3) + 0.7)
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid[0]])
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT pg_try_advisory_lock(%s), pg_advisory_unlock(%s)", [ORPHAN_LOCK_KEY] * 2)
        assert cursor.fetchone()[0] is True
    thread.join(10)
    assert errors, "the orphaned session was not ended"
    assert "idle-in-transaction timeout" in str(errors[0])


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_soft_limit_inside_a_statement_is_recorded_as_timeout_on_a_fresh_connection(
    local_controllers: None,
) -> None:
    summary = run_controller(SoftLimited.name, trigger="test")
    assert (summary.outcome, summary.reason) == ("error", "timeout"), summary.error_text
    row = ReconcileRun.objects.get(pk=summary.run_id)
    assert (row.outcome, row.reason) == ("error", "timeout")
    assert "SoftTimeLimitExceeded" in row.error
    assert run_controller(SoftLimited.name, force=True, trigger="test").reason == "timeout"
