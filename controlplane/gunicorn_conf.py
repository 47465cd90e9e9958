"""Gunicorn settings for the web service (`--config python:controlplane.gunicorn_conf`)."""

from __future__ import annotations

import os
from typing import Any

from reconcilers.runtime.metrics import multiprocess_dir_reset, multiprocess_mark_dead

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

from django.conf import settings  # after naming the settings module

# With LOG_JSON=1 gunicorn's own lines (start, workers, errors) and its access lines are
# JSON objects too, through the same handler and formatters as the application's; the
# access line carries the request's X-Request-ID. Plain text keeps gunicorn's defaults.
if settings.LOG_JSON:
    logconfig_dict = settings.LOGGING


def on_starting(server: Any) -> None:
    """The master, before any worker: drop the files of the previous run's workers from
    PROMETHEUS_MULTIPROC_DIR (files of live processes, such as a worker sharing the
    directory, stay)."""
    multiprocess_dir_reset()


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's `livesum` gauges (e.g. controller running) must stop counting in
    prometheus_client's multiprocess mode; its counters stay, as they should."""
    multiprocess_mark_dead(worker.pid)
