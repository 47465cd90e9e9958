"""The Celery app: Django settings under the CELERY_ namespace, DatabaseScheduler for beat.

Reconcile tasks go to their own queue (settings.RECONCILERS_QUEUE), so a backlog of other
work never delays them and a dedicated worker can serve only them.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **extra: Any) -> Any:
    """Route every reconciler task to the reconcilers queue (read at send time)."""
    if name.startswith("reconcilers."):
        return {"queue": settings.RECONCILERS_QUEUE}
    return None


app.conf.task_routes = (route_task,)
app.autodiscover_tasks()
