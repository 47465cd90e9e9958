"""Gunicorn settings for the web service (`--config python:controlplane.gunicorn_conf`)."""

from __future__ import annotations

from typing import Any

from reconcilers.runtime.metrics import multiprocess_mark_dead


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's `livesum` gauges (e.g. controller running) must stop counting in
    prometheus_client's multiprocess mode; its counters stay, as they should."""
    multiprocess_mark_dead(worker.pid)
