"""The in-process manager (design.md §4.13): every controller in its own thread, for single-node
installs and tests without a broker.

Each thread runs its controller at start, then every interval plus a random jitter (read
from the config before each wait, so a change applies without a restart), always through
the runner: the same lock, fencing, too-soon guard and run history as under Celery.
Positive jitter keeps the gap between two runs at least one interval, so the too-soon
guard never trips on the manager's own schedule.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from django.db import connection
from django.utils import timezone as django_timezone

from reconcilers.runtime.config import config_effective
from reconcilers.runtime.contract import Controller
from reconcilers.runtime.runner import run
from reconcilers.runtime.summary import RunSummary

log = logging.getLogger(__name__)

JITTER_FRACTION = 0.1  # up to 10 % of the interval added to every wait, so controllers drift apart
STOP_JOIN_SECONDS = 30.0  # how long stop() waits for a run in progress to reach its end


class Manager:
    """Controllers are added to it (it looks none up); it runs each in its own thread until stopped."""

    def __init__(
        self,
        *,
        runner: Callable[..., RunSummary] = run,
        jitter_fraction: float = JITTER_FRACTION,
    ) -> None:
        self._controllers: dict[str, Controller] = {}
        self._runner = runner
        self._jitter_fraction = jitter_fraction
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def register(self, controller: Controller) -> None:
        """Add a controller; a duplicate name is an error."""
        if controller.name in self._controllers:
            raise ValueError(f"controller {controller.name!r} is already registered")
        self._controllers[controller.name] = controller

    def controller_count(self) -> int:
        return len(self._controllers)

    def controller_names(self) -> list[str]:
        return list(self._controllers)

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("manager already started")
        self._stop.clear()
        for name, controller in self._controllers.items():
            thread = threading.Thread(
                target=self._loop, args=(controller,), name=f"controller-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        log.info("manager started %d controllers: %s", len(self._controllers), ", ".join(self._controllers))

    def request_stop(self) -> None:
        """Ask the threads to stop after their current run, without waiting (signal-handler safe)."""
        self._stop.set()

    def stop(self, timeout: float = STOP_JOIN_SECONDS) -> bool:
        """Ask every thread to stop after its current run; True if all ended within `timeout`."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            log.warning("manager: still running after %.0fs: %s", timeout, ", ".join(alive))
        else:
            log.info("manager stopped")
        return not alive

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() is called (True) or `timeout` passes (False)."""
        return self._stop.wait(timeout)

    def _loop(self, controller: Controller) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._runner(controller, trigger="manager")
                except Exception:  # the runner records its own failures; this is a last resort
                    log.exception("%s: run failed in the manager thread", controller.name)
                self._stop.wait(self._next_wait(controller))
        finally:
            connection.close()  # each thread has its own database connection

    def _next_wait(self, controller: Controller) -> float:
        try:
            config = config_effective(controller)
            now = django_timezone.now()
            due = config.next_due_after(now)
            if due is not None:
                # A crontab: sleep until its next due time (never early, so the too-soon guard,
                # measured on the same crontab, lets it run), plus a little jitter.
                wait = (due - now).total_seconds()
                return wait + random.uniform(0, min(self._jitter_fraction * wait, 5.0))
            interval = float(config.period_seconds)
        except Exception:
            log.exception("%s: cannot read its interval, using the default", controller.name)
            interval = float(controller.default_interval_seconds)
        return interval + random.uniform(0, self._jitter_fraction * interval)
