"""Gunicorn settings for the web service (`--config python:controlplane.gunicorn_conf`)."""

from __future__ import annotations

from typing import Any

from reconcilers.runtime.metrics import multiprocess_dir_reset, multiprocess_mark_dead


def on_starting(server: Any) -> None:
    """The master, before any worker: drop the files of the previous run's workers from
    PROMETHEUS_MULTIPROC_DIR (files of live processes, such as a worker sharing the
    directory, stay)."""
    multiprocess_dir_reset()


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's `livesum` gauges (e.g. controller running) must stop counting in
    prometheus_client's multiprocess mode; its counters stay, as they should."""
    multiprocess_mark_dead(worker.pid)
