"""The effective config of a controller: the one place that reads a config row (design.md §4.2).

A run, the beat schedule sync, the dashboard, /readyz, the CLI and the Celery time limits
all read a controller's config through `config_from_row` (one row) or the selectors built
on it (all rows in one query), so what "the config in effect" means is decided here only:
a row stores only what an operator set, and the controller's defaults (from code, so a
changed setting or a new release moves them) fill the rest; a missing row is all
defaults. A row whose params fail the controller's schema is reported as invalid, with
the validation message, and is never replaced by the defaults: a run refuses it
(`invalid_config`, design.md §4.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone as django_timezone
from pydantic import ValidationError

from reconcilers.models import GlobalPause, ReconcilerConfig
from reconcilers.runtime.contract import Controller, ControllerParams
from reconcilers.runtime.cron import Crontab, CrontabError, crontab_parse

RUN_TIMEOUT_CAP_SECONDS = 3600  # the default run timeout is min(interval, this)


@dataclass(frozen=True)
class EffectiveConfig:
    """The config in effect for one controller.

    `row_id` is None when no row exists (everything comes from the defaults). `params` is
    None exactly when the row's params fail the controller's schema; `error` then carries
    the validation message. `conflicts` names the constraints that a save refuses but an
    existing row may break (it keeps running, flagged).
    """

    controller: str
    enabled: bool
    interval_seconds: int
    dry_run: bool
    run_timeout_seconds: int
    params: ControllerParams | None
    row_id: int | None = None
    error: str = ""
    version: int | None = None
    updated_at: datetime | None = None
    conflicts: tuple[str, ...] = ()
    crontab: str = ""  # empty: the schedule is interval_seconds
    timezone: str = "UTC"

    @property
    def configured(self) -> bool:
        return self.row_id is not None

    @property
    def valid(self) -> bool:
        return self.params is not None

    @property
    def cron(self) -> Crontab | None:
        """The parsed crontab, or None on an interval schedule (or a stored crontab that fails
        to parse: the config is then invalid and every run refused, design.md §4.2)."""
        if not self.crontab:
            return None
        try:
            return crontab_parse(self.crontab, self.timezone)
        except CrontabError:
            return None

    def period_at(self, at: datetime) -> int:
        """Seconds between the due time of a run started at `at` and the due time before it:
        what the too-soon guard, staleness and the interval gauge measure against. The
        interval on an interval schedule; on a crontab it depends on the day (design.md §4.3)."""
        cron = self.cron
        return cron.period_seconds_at(at) if cron is not None else self.interval_seconds

    @property
    def period_seconds(self) -> int:
        """The period of a run starting now (this process's clock)."""
        return self.period_at(django_timezone.now())

    @property
    def shortest_period_seconds(self) -> int:
        """The shortest period ahead: what a run timeout must fit in and how long a message
        may wait (expiry) without replaying a backlog as a burst."""
        cron = self.cron
        return cron.shortest_gap_seconds(django_timezone.now()) if cron is not None else self.interval_seconds

    def next_due_after(self, at: datetime) -> datetime | None:
        """The next due time of a crontab after `at` (None on an interval schedule: the next
        tick depends on when beat last sent one)."""
        cron = self.cron
        return cron.next_fire(at) if cron is not None else None

    def schedule_text(self) -> str:
        return (
            f"cron {self.crontab} ({self.timezone})" if self.crontab else f"every {self.interval_seconds} s"
        )


def config_defaults(controller: Controller) -> dict[str, Any]:
    """The columns of a new config row. `params` is empty: every parameter takes its default
    from code until an operator sets it."""
    interval = controller.default_interval_seconds
    return {
        "enabled": True,
        "interval_seconds": interval,
        "crontab": "",
        "timezone": "UTC",
        "dry_run": False,
        "run_timeout_seconds": min(interval, RUN_TIMEOUT_CAP_SECONDS),
        "params": {},
    }


def run_timeout_conflict(run_timeout_seconds: int, period_seconds: int) -> str | None:
    """A run may not outlast its period: the next tick would find it still holding the lock."""
    if run_timeout_seconds <= period_seconds:
        return None
    return f"run_timeout_seconds ({run_timeout_seconds}) is longer than the period ({period_seconds} s)"


def params_error_text(exc: ValidationError) -> str:
    """A validation failure as one line naming the field: `params.<field>: <message>`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"params.{where}: {error['msg']}" if where else f"params: {error['msg']}"


def config_from_row(controller: Controller, row: ReconcilerConfig | None) -> EffectiveConfig:
    """The effective config of `controller` given its row (None: no row, the defaults)."""
    if row is None:
        defaults = config_defaults(controller)
        return EffectiveConfig(
            controller=controller.name,
            enabled=defaults["enabled"],
            interval_seconds=defaults["interval_seconds"],
            dry_run=defaults["dry_run"],
            run_timeout_seconds=defaults["run_timeout_seconds"],
            params=controller.validate_params(defaults["params"]),
        )
    params: ControllerParams | None = None
    error = ""
    if not isinstance(row.params, dict):  # a hand edit can store any JSON value
        error = f"params: must be a JSON object, got {type(row.params).__name__}"
    else:
        try:
            params = controller.validate_params(row.params)
        except ValidationError as exc:
            error = params_error_text(exc)
    crontab, zone = row.crontab or "", row.timezone or "UTC"
    if crontab and not error:
        try:
            crontab_parse(crontab, zone)
        except CrontabError as exc:  # only a hand edit stores one: refused like bad params
            params, error = None, f"crontab: {exc}"
    period = _shortest_period(crontab, zone, row.interval_seconds)
    conflict = run_timeout_conflict(row.run_timeout_seconds, period)
    return EffectiveConfig(
        controller=controller.name,
        enabled=row.enabled,
        interval_seconds=row.interval_seconds,
        dry_run=row.dry_run,
        run_timeout_seconds=row.run_timeout_seconds,
        params=params,
        row_id=row.pk,
        error=error,
        version=row.version,
        updated_at=row.updated_at,
        conflicts=(conflict,) if conflict else (),
        crontab=crontab,
        timezone=zone,
    )


def _shortest_period(crontab: str, zone: str, interval_seconds: int) -> int:
    if not crontab:
        return interval_seconds
    try:
        return crontab_parse(crontab, zone).shortest_gap_seconds(django_timezone.now())
    except CrontabError:
        return interval_seconds


def config_effective(controller: Controller) -> EffectiveConfig:
    """Read `controller`'s config row (one query) and return the config in effect."""
    return config_from_row(controller, ReconcilerConfig.objects.filter(controller=controller.name).first())


def paused_globally() -> bool:
    """The global pause: the environment setting or the switch in the admin (design.md §4.9)."""
    if settings.RECONCILERS_PAUSED:
        return True
    return bool(GlobalPause.objects.filter(pk=1).values_list("paused", flat=True).first())
