"""Config rows and django-celery-beat rows for every controller: created, kept in sync, repaired.

One PeriodicTask per controller (design.md §4.3), each with its own IntervalSchedule or
CrontabSchedule, whichever its config names: a schedule shared with another task is never edited in
place (that would silently retime the other task).
Runs at `post_migrate` (rows exist right after `migrate`), at beat start (repairs rows
edited by hand), and from `config_update` inside its transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from reconcilers.models import GlobalPause, ReconcilerConfig
from reconcilers.registry import controller_get, controller_names
from reconcilers.runtime.config import EffectiveConfig, config_defaults, config_from_row
from reconcilers.runtime.contract import Controller
from reconcilers.runtime.cron import Crontab

log = logging.getLogger(__name__)

TASK_PREFIX = "reconcilers."
PERIODIC_TASK_DESCRIPTION = "Managed by the reconcilers app: change it in Reconcilers > reconcilers."


def task_name(controller: str) -> str:
    """The stable Celery task name beat stores: agent-health -> reconcilers.agent_health."""
    return TASK_PREFIX + controller.replace("-", "_")


def periodic_task_name(controller: str) -> str:
    return f"reconcile {controller}"


def config_ensure(controller: Controller) -> ReconcilerConfig:
    """The controller's config row, created with its defaults if missing."""
    row, created = ReconcilerConfig.objects.get_or_create(
        controller=controller.name, defaults=config_defaults(controller)
    )
    if created:
        log.info("%s: created config with defaults", controller.name)
    return row


def periodic_task_sync(config: EffectiveConfig) -> PeriodicTask | None:
    """Make the controller's PeriodicTask match its config in effect (idempotent; saves only
    on change). An invalid row is never copied into beat: its task keeps the last valid
    schedule (its runs are refused anyway, design.md §4.2); None when it has no task yet.

    Call inside the caller's transaction; `PeriodicTask.save()` marks the schedule changed.
    """
    if not config.valid:
        log.error(
            "%s: config row is invalid, its beat schedule is left as it was: %s",
            config.controller,
            config.error,
        )
        return PeriodicTask.objects.filter(name=periodic_task_name(config.controller)).first()
    wanted = {
        "task": task_name(config.controller),
        "queue": settings.RECONCILERS_QUEUE,
        "enabled": config.enabled,
        # A backlog never replays as a burst: a message expires after the shortest period
        # ahead (the interval, or a crontab's shortest gap between two due times).
        "expire_seconds": config.shortest_period_seconds,
        "args": "[]",
        "kwargs": "{}",
        "headers": "{}",
        "one_off": False,
        "description": PERIODIC_TASK_DESCRIPTION,
    }
    task = (
        PeriodicTask.objects.select_related("interval", "crontab")
        .filter(name=periodic_task_name(config.controller))
        .first()
    )
    if task is None:
        task = PeriodicTask(name=periodic_task_name(config.controller))
    changed = task.pk is None
    for field_name, value in wanted.items():
        if getattr(task, field_name) != value and not (
            field_name in ("kwargs", "headers") and _same_json(getattr(task, field_name), str(value))
        ):
            setattr(task, field_name, value)
            changed = True
    # Exactly one schedule kind: the one the config names (a hand-set solar, clocked,
    # expires or start_time is repaired away; the other kind is cleared).
    for other in ("solar", "clocked", "expires", "start_time", "interval" if config.crontab else "crontab"):
        if getattr(task, other, None):
            setattr(task, other, None)
            changed = True
    cron = config.cron
    if cron is not None:
        changed = _crontab_attach(task, cron) or changed
    else:
        changed = _interval_attach(task, config.interval_seconds) or changed
    if changed:
        task.save()
        log.info(
            "%s: beat schedule synced (%s, enabled=%s)",
            config.controller,
            config.schedule_text(),
            config.enabled,
        )
    return task


def _shared(task: PeriodicTask, **schedule: object) -> bool:
    return PeriodicTask.objects.filter(**schedule).exclude(pk=task.pk).exists()


def _interval_attach(task: PeriodicTask, every: int) -> bool:
    """Point `task` at an IntervalSchedule of `every` seconds of its own; True if it changed."""
    schedule = task.interval if task.interval_id else None
    if schedule is not None and schedule.every == every and schedule.period == IntervalSchedule.SECONDS:
        return False
    if schedule is None or _shared(task, interval=schedule):
        schedule = IntervalSchedule.objects.create(every=every, period=IntervalSchedule.SECONDS)
    else:
        schedule.every = every
        schedule.period = IntervalSchedule.SECONDS
        schedule.save(update_fields=["every", "period"])
    task.interval = schedule
    return True


def _crontab_attach(task: PeriodicTask, cron: Crontab) -> bool:
    """Point `task` at a CrontabSchedule of its own matching `cron`; True if it changed."""
    fields = {
        "minute": cron.minute,
        "hour": cron.hour,
        "day_of_month": cron.day_of_month,
        "month_of_year": cron.month_of_year,
        "day_of_week": cron.day_of_week,
    }
    schedule = task.crontab if task.crontab_id else None
    if schedule is not None and _crontab_matches(schedule, fields, cron.timezone):
        return False
    if schedule is None or _shared(task, crontab=schedule):
        schedule = CrontabSchedule(**fields, timezone=ZoneInfo(cron.timezone))
        schedule.save()
    else:
        for name, value in fields.items():
            setattr(schedule, name, value)
        schedule.timezone = ZoneInfo(cron.timezone)
        schedule.save()
    task.crontab = schedule
    return True


def _crontab_matches(schedule: CrontabSchedule, fields: dict[str, str], zone: str) -> bool:
    return (
        all(getattr(schedule, name) == value for name, value in fields.items())
        and str(schedule.timezone) == zone
    )


def schedule_sync(names: Iterable[str] | None = None) -> None:
    """Create missing config rows and repair the beat rows of every registered controller.

    Idempotent: safe at every migrate and every beat start. Reconciler beat rows whose
    controller is no longer registered are disabled (not deleted: history stays readable).
    """
    selected = list(names) if names is not None else controller_names()
    with transaction.atomic():
        GlobalPause.objects.get_or_create(pk=1)
        for name in selected:
            controller = controller_get(name)
            periodic_task_sync(config_from_row(controller, config_ensure(controller)))
        if names is None:
            known = {task_name(name) for name in selected}
            stale = PeriodicTask.objects.filter(task__startswith=TASK_PREFIX, enabled=True).exclude(
                task__in=known
            )
            if stale.update(enabled=False):
                PeriodicTasks.update_changed()


def _same_json(stored: str, wanted: str) -> bool:
    try:
        return bool(json.loads(stored or "{}") == json.loads(wanted))
    except ValueError:
        return False
