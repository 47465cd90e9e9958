"""One Celery task per controller, named reconcilers.<name with underscores>.

The names are stable strings because beat stores them in the database. A task only
calls `run_controller` and returns the run's summary (Flower shows it). Time limits come per
message from the config (reconcilers.signals.on_before_task_publish).

Progress: after each batch the task sends a custom `task-progress` event (controller, run
id, items and steps so far). There is no result backend, so `update_state` would store
nothing; an event reaches every events receiver (Flower, `celery events`) as it happens.
"""

from __future__ import annotations

from typing import Any

from celery import Task, current_task

from controlplane.celery import app
from controlplane.common.logs import log_context
from reconcilers.registry import controller_get, controller_names
from reconcilers.runtime.context import RunProgress
from reconcilers.schedule import task_name
from reconcilers.services import run_controller

TRIGGERS = ("celery", "admin")  # what a message may name as its origin (logged with the run)


def _task_for(controller: str) -> Any:
    def reconcile(
        self: Task,
        dry_run: bool | None = None,
        force: bool = False,
        ignore_brake: bool = False,
        trigger: str = "celery",
    ) -> dict[str, Any]:
        # The task id on the run's lines ties them to Flower's task page and Celery's own lines.
        task_id = str(self.request.id or "")
        with log_context(task_id=task_id or None):
            return run_controller(
                controller,
                dry_run=dry_run,
                force=force,
                ignore_brake=ignore_brake,
                trigger=trigger if trigger in TRIGGERS else "celery",
                task_id=task_id,
                progress=progress_event_send,
            ).as_dict()

    reconcile.__name__ = reconcile.__qualname__ = f"reconcile_{controller.replace('-', '_')}"
    reconcile.__doc__ = f"Run one reconcile of {controller} through the runner."
    return app.task(name=task_name(controller), ignore_result=False, acks_late=False, bind=True)(reconcile)


PROGRESS_EVENT = "task-progress"


def progress_event_send(progress: RunProgress) -> None:
    """Send the run's counts as a Celery event of the task running it (retry off: a broker
    hiccup loses one progress event, it must not hold up the run)."""
    task = current_task
    if task is None or not task.request.id:
        return  # called eagerly or outside a worker: no task to report on
    task.send_event(PROGRESS_EVENT, retry=False, **progress.as_dict())


def tasks_register() -> dict[str, Task]:
    """Define a task for every registered controller (idempotent; call again after the
    registry changes, e.g. in tests that install extra controllers)."""
    defined: dict[str, Task] = {}
    for name in controller_names():
        tname = task_name(name)
        defined[name] = app.tasks[tname] if tname in app.tasks else _task_for(name)
    return defined


def reconcile_enqueue(controller: str, **options: Any) -> Any:
    """Send one reconcile of `controller` to the reconcilers queue (kwargs: dry_run, force,
    ignore_brake)."""
    return app.send_task(task_name(controller_get(controller).name), kwargs=options)


RECONCILE_TASKS = tasks_register()
