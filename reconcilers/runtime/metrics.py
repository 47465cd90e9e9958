"""Every controller metric, defined once: the Metrics interface, Prometheus and no-op (design.md §4.12).

Names: `<METRICS_NAMESPACE>_controller_<metric>`; every label combination of the
registered controllers is pre-created at 0 so a dashboard or alert never sees a gap.

The config gauges (enabled, dry_run, interval_seconds, config_invalid, paused) are not recorded by
runs: a collector reads them from the database at each scrape (design.md §4.12), so every
process's /metrics follows an admin change within one scrape.

Multiprocess: with PROMETHEUS_MULTIPROC_DIR set (Celery prefork, several gunicorn
workers), prometheus_client writes each process's values to files in that directory;
`multiprocess_registry()` aggregates them for a scrape. Gauge modes say how processes
combine: `livesum` for running (dead children drop out), `max` for timestamps,
`mostrecent` for values that are a setting or the latest observation.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SUBSYSTEM = "controller"
RESULTS = ("success", "error")
SKIP_REASONS = ("disabled", "paused", "locked", "lock_unavailable", "too_soon")
# Seconds; from sub-millisecond no-ops to the half-hour audit purge.
DURATION_BUCKETS_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics(Protocol):
    """What the runtime reports about runs: one method per event, whatever the backend."""

    def record_reconcile(
        self, controller: str, items_processed: int, duration_seconds: float, err: BaseException | None
    ) -> None: ...

    def set_controller_running(self, controller: str, running: bool) -> None: ...

    def increment_reconcile_errors(self, controller: str) -> None: ...

    def set_last_reconcile_time(self, controller: str, at: datetime) -> None: ...

    def record_skip(self, controller: str, reason: str) -> None: ...

    def increment_lock_lost(self, controller: str) -> None: ...

    def set_dry_run_pending_items(self, controller: str, items: int) -> None: ...

    def set_brake_engaged(self, controller: str, engaged: bool) -> None: ...

    def increment_runs_abandoned(self, controller: str, count: int) -> None: ...

    def precreate(self, controllers: Iterable[str]) -> None: ...


class NoopMetrics:
    """Metrics that record nothing (tests, tools)."""

    def record_reconcile(
        self, controller: str, items_processed: int, duration_seconds: float, err: BaseException | None
    ) -> None:
        pass

    def set_controller_running(self, controller: str, running: bool) -> None:
        pass

    def increment_reconcile_errors(self, controller: str) -> None:
        pass

    def set_last_reconcile_time(self, controller: str, at: datetime) -> None:
        pass

    def record_skip(self, controller: str, reason: str) -> None:
        pass

    def increment_lock_lost(self, controller: str) -> None:
        pass

    def set_dry_run_pending_items(self, controller: str, items: int) -> None:
        pass

    def set_brake_engaged(self, controller: str, engaged: bool) -> None:
        pass

    def increment_runs_abandoned(self, controller: str, count: int) -> None:
        pass

    def precreate(self, controllers: Iterable[str]) -> None:
        pass


class PrometheusMetrics:
    """The Prometheus implementation; registered in the default registry (web /metrics)."""

    def __init__(self, namespace: str, registry: CollectorRegistry | None = REGISTRY) -> None:
        common: dict[str, Any] = {"namespace": namespace, "subsystem": SUBSYSTEM, "registry": registry}
        self.reconcile_total = Counter(
            "reconcile_total", "Reconcile runs by result.", ["controller", "result"], **common
        )
        self.reconcile_errors_total = Counter(
            "reconcile_errors_total", "Reconcile runs that failed.", ["controller"], **common
        )
        self.reconcile_duration_seconds = Histogram(
            "reconcile_duration_seconds",
            "Duration of reconcile runs.",
            ["controller"],
            buckets=DURATION_BUCKETS_SECONDS,
            **common,
        )
        self.items_processed_total = Counter(
            "items_processed_total", "Rows changed by reconcile runs.", ["controller"], **common
        )
        self.running = Gauge(
            "running", "1 while a run executes.", ["controller"], multiprocess_mode="livesum", **common
        )
        self.last_reconcile_timestamp_seconds = Gauge(
            "last_reconcile_timestamp_seconds",
            "Unix time of the last successful run.",
            ["controller"],
            multiprocess_mode="max",
            **common,
        )
        self.reconcile_skipped_total = Counter(
            "reconcile_skipped_total", "Runs skipped, by reason.", ["controller", "reason"], **common
        )
        self.lock_lost_total = Counter(
            "lock_lost_total", "Runs stopped because their lock was lost.", ["controller"], **common
        )
        self.dry_run_pending_items = Gauge(
            "dry_run_pending_items",
            "Rows the last dry run found that a real run would change.",
            ["controller"],
            multiprocess_mode="mostrecent",
            **common,
        )
        self.brake_engaged = Gauge(
            "brake_engaged",
            "1 when the last run stopped at its safety brake.",
            ["controller"],
            multiprocess_mode="mostrecent",
            **common,
        )
        self.runs_abandoned_total = Counter(
            "runs_abandoned_total",
            "Runs found still marked running by a newer grant: their process died mid-run.",
            ["controller"],
            **common,
        )

    def precreate(self, controllers: Iterable[str]) -> None:
        for name in controllers:
            for result in RESULTS:
                self.reconcile_total.labels(name, result)
            for reason in SKIP_REASONS:
                self.reconcile_skipped_total.labels(name, reason)
            for metric in (
                self.reconcile_errors_total,
                self.reconcile_duration_seconds,
                self.items_processed_total,
                self.running,
                self.last_reconcile_timestamp_seconds,
                self.lock_lost_total,
                self.dry_run_pending_items,
                self.brake_engaged,
                self.runs_abandoned_total,
            ):
                metric.labels(name)

    def record_reconcile(
        self, controller: str, items_processed: int, duration_seconds: float, err: BaseException | None
    ) -> None:
        self.reconcile_total.labels(controller, "error" if err is not None else "success").inc()
        self.reconcile_duration_seconds.labels(controller).observe(duration_seconds)
        if items_processed:
            self.items_processed_total.labels(controller).inc(items_processed)

    def set_controller_running(self, controller: str, running: bool) -> None:
        self.running.labels(controller).set(1 if running else 0)

    def increment_reconcile_errors(self, controller: str) -> None:
        self.reconcile_errors_total.labels(controller).inc()

    def set_last_reconcile_time(self, controller: str, at: datetime) -> None:
        self.last_reconcile_timestamp_seconds.labels(controller).set(at.timestamp())

    def record_skip(self, controller: str, reason: str) -> None:
        self.reconcile_skipped_total.labels(controller, reason).inc()

    def increment_lock_lost(self, controller: str) -> None:
        self.lock_lost_total.labels(controller).inc()

    def set_dry_run_pending_items(self, controller: str, items: int) -> None:
        self.dry_run_pending_items.labels(controller).set(items)

    def set_brake_engaged(self, controller: str, engaged: bool) -> None:
        self.brake_engaged.labels(controller).set(1 if engaged else 0)

    def increment_runs_abandoned(self, controller: str, count: int) -> None:
        self.runs_abandoned_total.labels(controller).inc(count)


@cache
def metrics() -> PrometheusMetrics:
    """The process-wide metrics (created on first use, in the default registry)."""
    multiproc = os.environ.get(MULTIPROC_ENV)
    if multiproc:
        Path(multiproc).mkdir(parents=True, exist_ok=True)
    return PrometheusMetrics(settings.METRICS_NAMESPACE)


def metrics_precreate(controllers: Iterable[str]) -> None:
    """Pre-create every series of `controllers` at 0. The caller names the controllers: the
    runtime knows no registry."""
    metrics().precreate(controllers)


@dataclass(frozen=True)
class ControllerConfigSample:
    """One controller's config as the gauges show it."""

    controller: str
    enabled: bool
    dry_run: bool
    interval_seconds: int
    invalid: bool
    paused: bool = False  # the global pause holds its runs (they skip as `paused`)


ConfigSource = Callable[[], Iterable[ControllerConfigSample]]


class ConfigCollector(Collector):
    """The config gauges, read from `source` (the database) at every scrape.

    A value recorded by runs would go stale the moment an operator changes the config, and
    in multiprocess mode each process would keep its own; read at scrape time, every /metrics
    follows the database. A scrape while the database is down leaves these series out
    rather than failing the scrape.
    """

    def __init__(self, namespace: str, source: ConfigSource) -> None:
        self.prefix = f"{namespace}_{SUBSYSTEM}_"
        self.source = source

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # values come from the database: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            samples = list(self.source())
        except Exception:  # never fail the scrape: the other series still tell a story
            log.exception("metrics: could not read the controller configs")
            return
        families = {
            "enabled": ("1 when the controller is enabled.", lambda c: c.enabled),
            "dry_run": ("1 when dry-run is on.", lambda c: c.dry_run),
            "interval_seconds": (
                "Configured interval (seconds between due runs).",
                lambda c: c.interval_seconds,
            ),
            "config_invalid": (
                "1 when the config row fails its schema: every run is refused (invalid_config).",
                lambda c: c.invalid,
            ),
            # Per controller, though the pause is global, so an alert can drop paused
            # controllers with `unless on (controller)` like disabled ones.
            "paused": ("1 while the global pause holds the controller's runs.", lambda c: c.paused),
        }
        for name, (documentation, value) in families.items():
            family = GaugeMetricFamily(self.prefix + name, documentation, labels=["controller"])
            for sample in samples:
                family.add_metric([sample.controller], float(value(sample)))
            yield family


_config_collector: ConfigCollector | None = None


def config_source_install(source: ConfigSource) -> None:
    """Export the config gauges from `source` in this process's scrapes (called at start by
    the app that knows where configs live; a second call replaces the source)."""
    global _config_collector
    if _config_collector is None:
        _config_collector = ConfigCollector(settings.METRICS_NAMESPACE, source)
        REGISTRY.register(_config_collector)
    else:
        _config_collector.source = source


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def multiprocess_dir_reset(keep_pid: int | None = None) -> None:
    """Empty the multiprocess directory when a process group starts (the worker's main
    process, the gunicorn master), so values of a previous run's processes never add up
    with this run's.

    Only files of processes that have ended go: a live process writes through a memory map
    of its files, and deleting them under it would make its values vanish from every scrape
    until it restarts. So a worker restart never empties the directory under a running web
    (or another worker) that shares it. Files of `keep_pid` are kept too: the worker's main
    process has already created its own zero-valued series (at Django setup).
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            continue
        pid = multiprocess_file_pid(entry.name)
        if pid is not None and (pid == keep_pid or _process_alive(pid)):
            continue
        entry.unlink(missing_ok=True)


def multiprocess_file_pid(name: str) -> int | None:
    """The pid in a multiprocess file name (`counter_123.db`, `gauge_livesum_123.db`), or None."""
    stem, dot, suffix = name.rpartition(".")
    tail = stem.rpartition("_")[2]
    if dot and suffix == "db" and tail.isdigit():
        return int(tail)
    return None


def _process_alive(pid: int) -> bool:
    """Whether `pid` is a running process on this host (the directory is per host, so its
    pids are this host's; a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def multiprocess_mark_dead(pid: int) -> None:
    """Drop a finished process's live gauges (livesum/liveall) from the aggregate."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)


def multiprocess_registry() -> CollectorRegistry:
    """What a scrape of this process shows: in multiprocess mode every process's values
    aggregated, plus the config gauges; otherwise the default registry, which has both."""
    if not multiprocess_enabled():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if _config_collector is not None:
        registry.register(_config_collector)
    return registry
