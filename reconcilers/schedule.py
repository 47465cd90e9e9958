"""Config rows and django-celery-beat rows for every controller: created, kept in sync, repaired.

One PeriodicTask per controller (design.md §4.3), each with its own IntervalSchedule: a schedule shared
with another task is never edited in place (that would silently retime the other task).
Runs at `post_migrate` (rows exist right after `migrate`), at beat start (repairs rows
edited by hand), and from `config_update` inside its transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from reconcilers.models import GlobalPause, ReconcilerConfig
from reconcilers.registry import controller_get, controller_names
from reconcilers.runtime.config import EffectiveConfig, config_defaults, config_from_row
from reconcilers.runtime.contract import Controller

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
        "expire_seconds": config.period_seconds,  # a backlog never replays as a burst
        "args": "[]",
        "kwargs": "{}",
        "headers": "{}",
        "one_off": False,
        "description": PERIODIC_TASK_DESCRIPTION,
    }
    task = (
        PeriodicTask.objects.select_related("interval")
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
    for other in ("crontab", "solar", "clocked", "expires", "start_time"):
        if getattr(task, other, None):
            setattr(task, other, None)
            changed = True
    schedule = task.interval if task.interval_id else None
    if (
        schedule is None
        or schedule.every != config.interval_seconds
        or schedule.period != IntervalSchedule.SECONDS
    ):
        shared = (
            schedule is not None
            and PeriodicTask.objects.filter(interval=schedule).exclude(pk=task.pk).exists()
        )
        if schedule is None or shared:
            schedule = IntervalSchedule.objects.create(
                every=config.interval_seconds, period=IntervalSchedule.SECONDS
            )
        else:
            schedule.every = config.interval_seconds
            schedule.period = IntervalSchedule.SECONDS
            schedule.save(update_fields=["every", "period"])
        task.interval = schedule
        changed = True
    if changed:
        task.save()
        log.info(
            "%s: beat schedule synced (every %ss, enabled=%s)",
            config.controller,
            config.interval_seconds,
            config.enabled,
        )
    return task


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
