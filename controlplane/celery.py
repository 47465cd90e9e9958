"""The Celery app: Django settings under the CELERY_ namespace, DatabaseScheduler for beat.

Logging is the project's (settings.LOGGING, plain or JSON), not Celery's: connecting the
setup_logging signal is how Celery is told to leave it alone (see celery_logging_setup).

Reconcile tasks go to their own queue (settings.RECONCILERS_QUEUE), so a backlog of other
work never delays them and a dedicated worker can serve only them.
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging, worker_ready, worker_shutdown
from django.conf import settings

from controlplane.common.logs import logging_config

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **extra: Any) -> Any:
    """Route every reconciler task to the reconcilers queue (read at send time)."""
    if name.startswith("reconcilers."):
        return {"queue": settings.RECONCILERS_QUEUE}
    return None


app.conf.task_routes = (route_task,)
log = logging.getLogger("controlplane.celery")


@setup_logging.connect
def celery_logging_setup(loglevel: int | str | None = None, **kwargs: Any) -> None:
    """Worker and beat log through the project's one handler (JSON with LOG_JSON=1).

    Celery replaces the root logger's handlers with its own plain "[time: LEVEL/Process]"
    format unless a receiver of this signal configures logging; it then also leaves
    stdout alone. `--loglevel` sets everyone's level, the project's loggers go down to
    LOG_LEVEL if that is more verbose. Python warnings become log records too, so even
    they arrive as one JSON object per line.
    """
    cli_level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or "WARNING")
    cli_level = str(cli_level).upper()
    levels = logging.getLevelNamesMapping()
    project = min((cli_level, settings.LOG_LEVEL), key=lambda name: levels.get(name, logging.INFO))
    logging.config.dictConfig(logging_config(level=project, json=settings.LOG_JSON, root_level=cli_level))
    logging.captureWarnings(True)


app.autodiscover_tasks()


@celeryd_init.connect
def celery_warnings_logged(**kwargs: Any) -> None:
    """Warnings become log records from the worker's first moment: Celery warns (e.g. about
    running as root) before it sets up logging, and a raw multi-line warning on stderr would
    break one-object-per-line."""
    logging.captureWarnings(True)


@worker_ready.connect
def celery_shutdown_quiet(sender: Any = None, **kwargs: Any) -> None:
    """With LOG_JSON=1, Celery's "worker: Warm shutdown (MainProcess)", which it prints to
    stdout from its signal handlers, is replaced by a log line (celery_shutdown_logged).
    The handlers are Celery's own, reinstalled with verbose=False."""
    worker = getattr(sender, "controller", None)
    if not settings.LOG_JSON or worker is None:
        return
    from celery.apps import worker as celery_worker

    celery_worker.install_worker_term_handler(worker, verbose=False)  # type: ignore[attr-defined]
    celery_worker.install_worker_term_hard_handler(worker, verbose=False)  # type: ignore[attr-defined]


@worker_shutdown.connect
def celery_shutdown_logged(**kwargs: Any) -> None:
    # Logged here, on the main thread's way out, not in the signal handler: a write from a
    # handler that interrupted another write to the same stream raises.
    log.info("worker: shutting down")
