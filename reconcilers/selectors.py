"""Reads about the controllers: configs in effect, run history, health. Writes are in services.

Every reader of a config goes through `reconcilers.runtime.config` (design.md §4.2); the
functions here apply it to every registered controller in one query each, for the
dashboard, /readyz, the CLI, schedule sync and the Celery time limits. Each function
issues a fixed number of queries, whatever the number of controllers or runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, F, Max, Q, Sum, Window
from django.db.models.functions import RowNumber, TruncHour

from controlplane.common.db import db_now
from reconcilers.models import ReconcilerConfig, ReconcilerState, ReconcileRun, RunOutcome
from reconcilers.registry import controller_get, controller_names
from reconcilers.rules import FAIRNESS_FIELDS, fairness_conflict
from reconcilers.runtime.config import EffectiveConfig, config_from_row, paused_globally
from reconcilers.runtime.metrics import ControllerConfigSample

# A controller is stale after this many periods without a successful run: one missed
# tick is noise (a deploy, a busy lock), three is a controller that stopped working.
STALE_AFTER_PERIODS = 3
RUNS_PER_CONTROLLER = 50  # the dashboard's chart points per controller


def configs_effective(names: Iterable[str] | None = None) -> dict[str, EffectiveConfig]:
    """The config in effect of each controller (all registered when `names` is None), in
    registry order, from one query; both sides of a cross-controller rule carry its conflict
    (reconcilers.rules) when their rows break it."""
    selected = list(names) if names is not None else controller_names()
    paired = set(FAIRNESS_FIELDS) if set(selected) & set(FAIRNESS_FIELDS) else set()
    wanted = [*selected, *(paired & set(controller_names()) - set(selected))]
    rows = {row.controller: row for row in ReconcilerConfig.objects.filter(controller__in=wanted)}
    configs = {name: config_from_row(controller_get(name), rows.get(name)) for name in wanted}
    conflict = fairness_conflict({name: configs[name].params for name in paired if name in configs})
    if conflict is not None:
        for name in paired & set(configs):
            configs[name] = replace(configs[name], conflicts=(*configs[name].conflicts, conflict))
    return {name: configs[name] for name in selected}


def config_samples() -> list[ControllerConfigSample]:
    """What the config gauges show for every controller (read at each scrape)."""
    paused = paused_globally()
    return [
        ControllerConfigSample(
            controller=name,
            enabled=config.enabled,
            dry_run=config.dry_run,
            interval_seconds=config.period_seconds,
            invalid=not config.valid,
            paused=paused,
        )
        for name, config in configs_effective().items()
    ]


def config_of(name: str) -> EffectiveConfig:
    """The config in effect of one controller (raises UnknownControllerError)."""
    return configs_effective([name])[name]


def states_by_controller(names: Iterable[str]) -> dict[str, ReconcilerState]:
    """Each controller's fencing and lock state row, from one query."""
    return {state.controller: state for state in ReconcilerState.objects.filter(controller__in=list(names))}


def _rank_newest_first() -> Window:
    """1 for each controller's newest run, 2 for the next, and so on."""
    return Window(
        RowNumber(), partition_by=[F("controller")], order_by=[F("started_at").desc(), F("id").desc()]
    )


def recent_runs(names: list[str], per_controller: int = RUNS_PER_CONTROLLER) -> dict[str, list[ReconcileRun]]:
    """The newest `per_controller` runs of each controller, newest first, in one query.

    A window (ROW_NUMBER per controller) rather than one global LIMIT, so a 30 s controller
    never crowds a daily one out of its own history.
    """
    ranked = (
        ReconcileRun.objects.filter(controller__in=names)
        .defer("error")
        .annotate(rank=_rank_newest_first())
        .filter(rank__lte=per_controller)
        .order_by("controller", "-started_at", "-id")
    )
    runs: dict[str, list[ReconcileRun]] = defaultdict(list)
    for run in ranked:
        runs[run.controller].append(run)
    return runs


def last_dry_runs(names: list[str]) -> dict[str, ReconcileRun]:
    """Each controller's newest successful dry run (its would_change), in one query."""
    ranked = (
        ReconcileRun.objects.filter(controller__in=names, dry_run=True, outcome=RunOutcome.SUCCESS)
        .defer("error")
        .annotate(rank=_rank_newest_first())
        .filter(rank=1)
    )
    return {run.controller: run for run in ranked}


def last_runs(names: list[str]) -> dict[str, ReconcileRun]:
    """Each controller's newest run: one query per controller through the (controller,
    started_at) index, never a scan of the history."""
    last: dict[str, ReconcileRun] = {}
    for name in names:
        run = ReconcileRun.objects.filter(controller=name).order_by("-started_at", "-id").first()
        if run is not None:
            last[name] = run
    return last


def last_success_at(names: list[str]) -> dict[str, datetime]:
    """When each controller's newest successful run started, in one query."""
    return {
        row["controller"]: row["last"]
        for row in ReconcileRun.objects.filter(controller__in=names, outcome=RunOutcome.SUCCESS)
        .values("controller")
        .annotate(last=Max("started_at"))
    }


@dataclass(frozen=True)
class ControllerHealth:
    name: str
    status: str  # ok | stale | disabled | paused | dry_run
    enabled: bool
    dry_run: bool
    interval_seconds: int
    last_success_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "enabled": self.enabled,
            "dry_run": self.dry_run,
            "interval_seconds": self.interval_seconds,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
        }


def controllers_health(*, paused: bool) -> list[ControllerHealth]:
    """One entry per registered controller, in three queries whatever their number (design.md §10.1).

    Precedence: paused, then disabled, then stale, then dry_run, else ok. A dry run that
    succeeds counts as a successful run: the controller is alive, just not writing.
    Without any success yet, the stale clock starts when the config row last changed
    (created by migrate), so a fresh install is not reported stale before it had a chance.
    """
    configs = configs_effective()
    names = list(configs)
    successes = last_success_at(names)
    now = db_now()
    result = []
    for name, config in configs.items():
        success_at = successes.get(name)
        anchor = success_at or config.updated_at
        stale = anchor is None or now - anchor > timedelta(
            seconds=STALE_AFTER_PERIODS * config.period_at(now)
        )
        if paused:
            status = "paused"
        elif not config.enabled:
            status = "disabled"
        elif stale:
            status = "stale"
        elif config.dry_run:
            status = "dry_run"
        else:
            status = "ok"
        result.append(
            ControllerHealth(
                name=name,
                status=status,
                enabled=config.enabled,
                dry_run=config.dry_run,
                interval_seconds=config.period_at(now),
                last_success_at=success_at,
            )
        )
    return result


# --- the overview: every controller's state at a glance (design.md §7) ---

OVERVIEW_WINDOW_HOURS = 24


class ControllerState:
    """The overview's states, most urgent first: the first that applies is shown."""

    INVALID = "invalid config"  # every run is refused until the row is fixed
    PAUSED = "paused"
    DISABLED = "disabled"
    RUNNING = "running"
    FAILING = "failing"  # the newest run that did work ended in an error
    STALE = "stale"  # no success within 3 periods (the /readyz rule)
    OK = "ok"


@dataclass(frozen=True)
class ControllerOverview:
    name: str
    state: str
    enabled: bool
    dry_run: bool
    schedule: str  # "every 30 s" or "cron 0 3 * * * (UTC)"
    period_seconds: int
    last_success_at: datetime | None
    last_success_age_seconds: float | None
    next_due_at: datetime | None
    runs_24h: int  # runs that did work or tried to (skips not counted)
    errors_24h: int
    items_24h: int
    items_by_hour: tuple[int, ...]  # OVERVIEW_WINDOW_HOURS buckets, oldest first
    brake_engaged: bool
    config_error: str
    config_row_id: int | None
    now: datetime


def _overview_state(
    config: EffectiveConfig, *, paused: bool, running: bool, failing: bool, stale: bool
) -> str:
    if not config.valid:
        return ControllerState.INVALID
    if paused:
        return ControllerState.PAUSED
    if not config.enabled:
        return ControllerState.DISABLED
    if running:
        return ControllerState.RUNNING
    if failing:
        return ControllerState.FAILING
    if stale:
        return ControllerState.STALE
    return ControllerState.OK


def age_text(seconds: float | None) -> str:
    """A short age for the overview and the admin list: 42 s, 7 min, 3 h, 2 d."""
    if seconds is None:
        return "never"
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit != "min" else 1):
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def controllers_overview(*, paused: bool) -> list[ControllerOverview]:
    """One row per registered controller, in registry order, from a fixed number of queries
    (configs, last successes, running rows, newest finished run, 24 h totals, 24 h by hour)
    whatever the number of controllers or runs."""
    configs = configs_effective()
    names = list(configs)
    now = db_now()
    since = now - timedelta(hours=OVERVIEW_WINDOW_HOURS)
    successes = last_success_at(names)
    running = set(
        ReconcileRun.objects.filter(controller__in=names, outcome=RunOutcome.RUNNING)
        .values_list("controller", flat=True)
        .distinct()
    )
    finished = {
        run.controller: run
        for run in ReconcileRun.objects.filter(
            controller__in=names, outcome__in=[RunOutcome.SUCCESS, RunOutcome.ERROR]
        )
        .only("controller", "started_at", "outcome", "flags", "dry_run")
        .annotate(rank=_rank_newest_first())
        .filter(rank=1)
    }
    newest_start = {
        row["controller"]: row["last"]
        for row in ReconcileRun.objects.filter(controller__in=names)
        .values("controller")
        .annotate(last=Max("started_at"))
    }
    worked = ReconcileRun.objects.filter(controller__in=names, started_at__gte=since).exclude(
        outcome=RunOutcome.SKIPPED
    )
    totals = {
        row["controller"]: row
        for row in worked.values("controller").annotate(
            runs=Count("id"),
            errors=Count("id", filter=Q(outcome=RunOutcome.ERROR)),
            items=Sum("items"),
        )
    }
    by_hour: dict[str, list[int]] = defaultdict(lambda: [0] * OVERVIEW_WINDOW_HOURS)
    for row in (
        worked.annotate(hour=TruncHour("started_at"))
        .values("controller", "hour")
        .annotate(items=Sum("items"))
    ):
        index = int((row["hour"] - since).total_seconds() // 3600)
        index = min(max(index, 0), OVERVIEW_WINDOW_HOURS - 1)
        by_hour[row["controller"]][index] += int(row["items"] or 0)
    result = []
    for name, config in configs.items():
        success_at = successes.get(name)
        period = config.period_at(now)
        anchor = success_at or config.updated_at
        stale = anchor is None or now - anchor > timedelta(seconds=STALE_AFTER_PERIODS * period)
        last_finished = finished.get(name)
        failing = last_finished is not None and last_finished.outcome == RunOutcome.ERROR
        if config.cron is not None:
            next_due = config.next_due_after(now)
        else:
            started = newest_start.get(name)
            next_due = started + timedelta(seconds=config.interval_seconds) if started else None
        total = totals.get(name, {})
        result.append(
            ControllerOverview(
                name=name,
                state=_overview_state(
                    config, paused=paused, running=name in running, failing=failing, stale=stale
                ),
                enabled=config.enabled,
                dry_run=config.dry_run,
                schedule=config.schedule_text(),
                period_seconds=period,
                last_success_at=success_at,
                last_success_age_seconds=(now - success_at).total_seconds() if success_at else None,
                next_due_at=next_due,
                runs_24h=int(total.get("runs") or 0),
                errors_24h=int(total.get("errors") or 0),
                items_24h=int(total.get("items") or 0),
                items_by_hour=tuple(by_hour[name]),
                brake_engaged=bool(
                    last_finished is not None and (last_finished.flags or {}).get("brake_engaged")
                ),
                config_error=config.error,
                config_row_id=config.row_id,
                now=now,
            )
        )
    return result
