"""Beat stops on SIGTERM/SIGINT without doing database work inside the signal handler.

Celery's own handler saves the schedule from inside the handler, so a signal that lands
mid-query deadlocks beat on the psycopg connection lock (it then needs SIGKILL). The
in-process tests drive celery.beat.Service with a scheduler stand-in and real signals; the
PostgreSQL test stops a real `celery beat` while its query waits on a table lock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import beat
from celery.apps.beat import Beat
from django.test import override_settings

from controlplane.celery import app
from stress import db
from stress.base import StressEnv, configure, first_traceback, traceback_count, wait_until
from stress.procs import ProcessSet, RedisServer

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_PORT = 16452  # inside the stress suite's private range, apart from its scenarios


class SchedulerStandIn:
    """What Service.start needs from a scheduler: `tick` returns the seconds to sleep."""

    max_interval = 30

    def __init__(self, on_tick: Any = None, sleep_seconds: float = 30.0) -> None:
        self.on_tick = on_tick
        self.sleep_seconds = sleep_seconds
        self.ticks = 0
        self.completed_ticks = 0
        self.closed = False

    def tick(self) -> float:
        self.ticks += 1
        if self.on_tick is not None:
            self.on_tick()
        self.completed_ticks += 1
        return self.sleep_seconds

    def should_sync(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def restore_stop_signals() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def start_like_celery_beat(scheduler: SchedulerStandIn) -> beat.Service:
    """Run Service.start as `celery beat` does: Celery's handler installed first, then
    start (whose beat_init lets ours replace it). Returns once start returns."""
    service = beat.Service(app, remote_control=False)
    service.__dict__["scheduler"] = scheduler  # the cached property, pre-filled
    Beat(app=app).install_sync_handler(service)
    service.start()
    return service


@pytest.mark.usefixtures("restore_stop_signals")
def test_sigterm_while_beat_sleeps_stops_it_at_once_and_saves_the_schedule_after_the_handler() -> None:
    scheduler = SchedulerStandIn(sleep_seconds=30.0)
    sender = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM))
    began = time.monotonic()
    sender.start()
    try:
        service = start_like_celery_beat(scheduler)
    finally:
        sender.cancel()
    # The handler raised SystemExit into the 30-s sleep; start caught it and closed the
    # scheduler on the main thread.
    assert time.monotonic() - began < 10
    assert scheduler.closed
    assert service._is_shutdown.is_set()
    assert scheduler.ticks == 1


@pytest.mark.usefixtures("restore_stop_signals")
def test_sigterm_while_beat_is_busy_lets_the_tick_finish_before_stopping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The signal lands inside tick (as it would inside a query): the tick must run to its
    # end, untouched, and beat stops at the next turn of its loop. Celery's handler would
    # close the scheduler and raise SystemExit right there, cutting the tick short.
    handler_records: list[str] = []

    def signal_mid_tick() -> None:
        if scheduler.ticks == 1:
            before = len(caplog.records)
            os.kill(os.getpid(), signal.SIGTERM)
            handler_records.extend(r.getMessage() for r in caplog.records[before:])
            assert not scheduler.closed, "the handler closed the scheduler under a running tick"

    scheduler = SchedulerStandIn(on_tick=signal_mid_tick, sleep_seconds=0.1)
    with caplog.at_level("INFO"):
        start_like_celery_beat(scheduler)
    assert scheduler.completed_ticks == scheduler.ticks == 1
    assert scheduler.closed
    # Nothing logged from inside the handler: the interrupted code may be mid-write to the
    # same stream.
    assert handler_records == []


@pytest.mark.usefixtures("restore_stop_signals")
def test_a_beat_embedded_in_a_worker_keeps_the_workers_signal_handlers() -> None:
    def worker_handler(signum: int, frame: Any) -> None:
        raise AssertionError("not delivered in this test")

    signal.signal(signal.SIGTERM, worker_handler)
    from reconcilers.signals import on_beat_init

    on_beat_init(sender=beat.Service(app, remote_control=False))
    assert signal.getsignal(signal.SIGTERM) is worker_handler


@pytest.mark.slow
@pytest.mark.postgres_only
def test_sigterm_while_a_beat_query_waits_on_a_lock_neither_deadlocks_nor_logs_a_traceback(
    tmp_path: Path,
) -> None:
    env = StressEnv(log_dir=tmp_path, redis_port=REDIS_PORT)
    with override_settings(AGENT_HEARTBEAT_INTERVAL_SECONDS=1):
        configure({"queue-priority": {"interval_seconds": 1, "run_timeout_seconds": 1}})
    redis_server = RedisServer(env.redis_port, tmp_path)
    procs = ProcessSet(tmp_path, env.subprocess_env())
    locker = psycopg.connect(db.database_url("beat-stop-test-locker"))
    try:
        redis_server.start()
        proc = procs.celery_beat("beat")
        assert wait_until(lambda: "Sending due task" in proc.log_text(), 30), proc.log_text()
        # Every tick beat reads django_celery_beat_periodictasks (has the schedule changed?);
        # with the table locked that read waits, holding the psycopg connection's lock.
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE django_celery_beat_periodictasks IN ACCESS EXCLUSIVE MODE")
        assert wait_until(lambda: lock_waiters(locker) > 0, 30), "beat never queried the locked table"
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(1.0)  # the handler has run, mid-query
        locker.execute("ROLLBACK")
        try:
            code = proc.popen.wait(timeout=20)
        except Exception:
            code = None
        log = proc.log_text()
        assert code == 0, f"beat did not stop on SIGTERM (deadlocked in its signal handler?)\n{log[-3000:]}"
        assert traceback_count(log) == 0, first_traceback(log)
    finally:
        locker.close()
        procs.stop_all()
        redis_server.stop()


def lock_waiters(locker: psycopg.Connection[Any]) -> int:
    with psycopg.connect(db.database_url()) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> %s",
            (locker.info.backend_pid,),
        ).fetchone()
    return int(row[0]) if row else 0
