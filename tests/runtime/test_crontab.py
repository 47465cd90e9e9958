"""Crontab schedules (design.md §4.3): refused when malformed or never due, synced to a CrontabSchedule
that a running beat follows, and the run's period (not a fixed interval) drives the guards."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.schedules import crontab as celery_crontab
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from controlplane.audit.models import AuditLog
from controlplane.celery import app
from controlplane.common.db import db_now
from reconcilers.models import ReconcilerConfig, ReconcilerState, ReconcileRun, RunOutcome
from reconcilers.runtime.cron import CrontabError, crontab_parse
from reconcilers.schedule import periodic_task_name, schedule_sync
from reconcilers.selectors import STALE_AFTER_PERIODS, config_of, config_samples, controllers_health
from reconcilers.services import ConfigValidationError, config_update, run_controller
from tests.runtime.controllers import Sleeper

HOUR = 3600
DAY = 24 * HOUR
WEEKDAYS_AT_3 = "0 3 * * 1-5"


def at(text: str, zone: str = "UTC") -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


# --- the period, without a database ---


def test_period_is_the_gap_to_the_previous_due_time_in_the_crontab_zone() -> None:
    weekdays = crontab_parse(WEEKDAYS_AT_3, "UTC")
    assert weekdays.period_seconds_at(at("2026-11-30T12:00")) == 3 * DAY  # Monday: since Friday
    assert weekdays.period_seconds_at(at("2026-12-01T12:00")) == DAY  # Tuesday
    assert weekdays.period_seconds_at(at("2026-12-05T12:00")) == DAY  # Saturday: Friday's run is due
    assert weekdays.period_seconds_at(at("2026-11-30T02:59")) == DAY  # Monday before 03:00: still Friday's
    assert weekdays.shortest_gap_seconds(at("2026-11-30T00:00")) == DAY


def test_a_dst_day_has_a_23_and_a_25_hour_period() -> None:
    daily = crontab_parse("0 3 * * *", "Europe/Paris")
    assert daily.period_seconds_at(at("2026-03-28T12:00", "Europe/Paris")) == DAY
    assert daily.period_seconds_at(at("2026-03-29T12:00", "Europe/Paris")) == 23 * HOUR  # clocks go forward
    assert daily.period_seconds_at(at("2026-10-25T12:00", "Europe/Paris")) == 25 * HOUR  # clocks go back
    # The due time is 03:00 local on both sides of the change, i.e. 01:00 UTC in summer.
    assert daily.next_fire(at("2026-03-29T00:00", "Europe/Paris")) == at("2026-03-29T01:00")
    assert daily.next_fire(at("2026-03-28T00:00", "Europe/Paris")) == at("2026-03-28T02:00")
    # A local time the change skips (02:30 on 29 March) still fires once that day.
    skipped = crontab_parse("30 2 * * *", "Europe/Paris")
    assert skipped.next_fire(at("2026-03-29T00:00", "Europe/Paris")) == at("2026-03-29T01:30")


def test_due_times_agree_with_celery_beat() -> None:
    """Beat decides with Celery's crontab; the fire times computed here must be the same."""
    for expression in (WEEKDAYS_AT_3, "*/15 9-17 * * *", "0 0 1,15 * 3", "30 23 * 2 *"):
        cron = crontab_parse(expression, "UTC")
        minute, hour, dom, month, dow = expression.split()
        celery = celery_crontab(minute, hour, dow, dom, month, app=app)
        start = at("2026-01-01T00:00")
        due = cron.next_fire(start)
        assert due is not None
        for _ in range(5):
            later = cron.next_fire(due)
            assert later is not None
            start, delta, _ = celery.remaining_delta(due)
            assert start + delta == later, expression
            due = later


@pytest.mark.parametrize(
    ("expression", "zone", "why"),
    [
        ("0 0 30 2 *", "UTC", "never occurs"),
        ("0 0 31 4 *", "UTC", "never occurs"),
        ("61 * * * *", "UTC", "cannot parse"),
        ("0 3 * *", "UTC", "5 fields"),
        ("0 3 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_malformed_or_never_due_crontabs_are_refused(expression: str, zone: str, why: str) -> None:
    with pytest.raises(CrontabError, match=why):
        crontab_parse(expression, zone)


def test_a_weekday_crontab_is_not_stale_over_the_weekend() -> None:
    """Friday 03:00 succeeded; from then until Monday's due time nothing is stale."""
    weekdays = crontab_parse(WEEKDAYS_AT_3, "UTC")
    last_success = at("2026-12-04T03:00")  # a Friday
    moment = last_success
    while moment < at("2026-12-07T03:00"):  # Monday's due time
        assert moment - last_success <= timedelta(
            seconds=STALE_AFTER_PERIODS * weekdays.period_seconds_at(moment)
        ), moment
        moment += timedelta(minutes=30)


# --- the config service and beat ---

pytestmark_db = pytest.mark.usefixtures("test_controllers")


@pytestmark_db
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"crontab": "0 0 30 2 *"}, "crontab"),
        ({"crontab": "0 3 * * *", "timezone": "Nowhere/Land"}, "timezone"),
        ({"crontab": "not a crontab at all"}, "crontab"),
        ({"crontab": 3}, "crontab"),
        # Every minute, but the run timeout is 60 s already; 30 s would not fit under "*/1 * * * * *".
        ({"crontab": "* * * * *", "run_timeout_seconds": 61}, "run_timeout_seconds"),
    ],
)
def test_config_update_refuses_a_bad_crontab_naming_the_field(changes: dict[str, Any], field: str) -> None:
    before = ReconcilerConfig.objects.values().get(controller=Sleeper.name)
    task_before = PeriodicTask.objects.values().get(name=periodic_task_name(Sleeper.name))
    with pytest.raises(ConfigValidationError) as refused:
        config_update(Sleeper.name, changes, actor="user:ops")
    assert refused.value.field == field
    assert ReconcilerConfig.objects.values().get(controller=Sleeper.name) == before
    assert PeriodicTask.objects.values().get(name=periodic_task_name(Sleeper.name)) == task_before
    assert not AuditLog.objects.filter(action="reconciler.config.updated").exists()


@pytestmark_db
@pytest.mark.django_db(transaction=True)
def test_a_crontab_saved_in_the_admin_moves_the_task_and_a_running_beat_follows() -> None:
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    staff = Client()
    staff.force_login(user)
    scheduler = DatabaseScheduler(app=app)  # a live scheduler: the one beat runs
    name = periodic_task_name(Sleeper.name)
    assert scheduler.schedule[name].schedule.run_every == timedelta(seconds=60)
    time.sleep(0.01)

    row = ReconcilerConfig.objects.get(controller=Sleeper.name)
    data = {
        "enabled": "on",
        "interval_seconds": row.interval_seconds,
        # Beat loads a crontab with a fixed hour only within 2 h of it
        # (django-celery-beat's own filter), so the live check uses an every-hour crontab.
        "crontab": "*/5 * * * *",
        "timezone": "Europe/Paris",
        "run_timeout_seconds": row.run_timeout_seconds,
        "params": json.dumps(row.params),
        "loaded_version": row.version,
    }
    url = reverse("admin:reconcilers_reconcilerconfig_change", args=[row.pk])
    response = staff.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]

    task = PeriodicTask.objects.select_related("crontab").get(name=name)
    assert task.interval is None
    assert task.crontab is not None
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == (
        "*/5",
        "*",
        "Europe/Paris",
    )
    assert task.expire_seconds == 300  # a message expires after the shortest gap ahead

    entry = scheduler.schedule[name]  # same scheduler instance: no restart
    assert isinstance(entry.schedule, celery_crontab)
    assert entry.schedule.minute == set(range(0, 60, 5))
    assert entry.options.get("expires") == 300

    # Beat start repairs hand edits but keeps the crontab (it used to clear it).
    schedule_sync()
    task.refresh_from_db()
    assert task.crontab_id is not None
    assert task.interval_id is None

    # The period, not the interval, is what the gauge and /readyz show.
    sample = next(s for s in config_samples() if s.controller == Sleeper.name)
    assert sample.interval_seconds == 300
    health = next(h for h in controllers_health(paused=False) if h.name == Sleeper.name)
    assert health.interval_seconds == 300

    # A daily crontab in a zone with DST: messages expire after the shortest day ahead.
    config_update(Sleeper.name, {"crontab": "0 3 * * *", "run_timeout_seconds": 60}, actor="user:ops")
    task = PeriodicTask.objects.select_related("crontab").get(name=name)
    assert (task.crontab.hour, str(task.crontab.timezone)) == ("3", "Europe/Paris")
    assert task.expire_seconds == 23 * HOUR

    # Back to an interval: the task gets an IntervalSchedule again, and beat follows.
    config_update(Sleeper.name, {"crontab": ""}, actor="user:ops")
    task = PeriodicTask.objects.select_related("interval").get(name=name)
    assert task.crontab is None
    assert task.interval is not None
    assert task.interval.every == 60
    assert scheduler.schedule[name].schedule.run_every == timedelta(seconds=60)


@pytestmark_db
def test_a_shared_crontab_schedule_is_never_edited_in_place() -> None:
    config_update(Sleeper.name, {"crontab": "0 3 * * *"}, actor="user:ops")
    mine = PeriodicTask.objects.get(name=periodic_task_name(Sleeper.name)).crontab
    assert mine is not None
    other = PeriodicTask.objects.create(name="someone else's", task="other.task", crontab=mine)
    config_update(Sleeper.name, {"crontab": "0 4 * * *"}, actor="user:ops")
    mine.refresh_from_db()
    assert mine.hour == "3"  # the other task's schedule is untouched
    assert PeriodicTask.objects.get(pk=other.pk).crontab_id == mine.pk
    moved = PeriodicTask.objects.get(name=periodic_task_name(Sleeper.name)).crontab
    assert moved is not None
    assert (moved.pk != mine.pk, moved.hour) == (True, "4")
    assert CrontabSchedule.objects.count() >= 2
    assert not IntervalSchedule.objects.filter(periodictask__name=periodic_task_name(Sleeper.name)).exists()


@pytestmark_db
def test_too_soon_and_staleness_measure_against_the_crontab_period() -> None:
    config_update(Sleeper.name, {"crontab": WEEKDAYS_AT_3}, actor="user:ops")
    now = db_now()
    period = config_of(Sleeper.name).period_at(now)
    assert period >= DAY  # whatever today is, never the 60 s interval

    # The too-soon gap is 0.75 of the crontab's period: 0.7 periods after the last real
    # start is too soon (with the 60 s interval it would long have been due).
    first = run_controller(Sleeper.name, trigger="test")
    assert first.outcome == "success"
    ReconcilerState.objects.filter(controller=Sleeper.name).update(
        last_real_started_at=now - timedelta(seconds=0.7 * period)
    )
    again = run_controller(Sleeper.name, trigger="test")
    assert (again.outcome, again.reason) == ("skipped", "too_soon")
    ReconcilerState.objects.filter(controller=Sleeper.name).update(
        last_real_started_at=now - timedelta(seconds=0.8 * period)
    )
    assert run_controller(Sleeper.name, trigger="test").outcome == "success"

    # Staleness: a last success two periods ago is fine (60 s intervals would say stale).
    ReconcileRun.objects.filter(controller=Sleeper.name).update(
        started_at=now - timedelta(seconds=2 * period)
    )
    health = {h.name: h for h in controllers_health(paused=False)}
    assert health[Sleeper.name].status == "ok"
    ReconcileRun.objects.filter(controller=Sleeper.name, outcome=RunOutcome.SUCCESS).update(
        started_at=now - timedelta(seconds=3 * period + 600)
    )
    ReconcilerConfig.objects.filter(controller=Sleeper.name).update(
        updated_at=now - timedelta(seconds=4 * period)
    )
    health = {h.name: h for h in controllers_health(paused=False)}
    assert health[Sleeper.name].status == "stale"


@pytestmark_db
def test_a_hand_edited_bad_crontab_is_refused_like_bad_params() -> None:
    ReconcilerConfig.objects.filter(controller=Sleeper.name).update(crontab="0 0 30 2 *")
    config = config_of(Sleeper.name)
    assert not config.valid
    assert config.error.startswith("crontab:")
    summary = run_controller(Sleeper.name, force=True, trigger="test")
    assert (summary.outcome, summary.reason) == ("error", "invalid_config")
