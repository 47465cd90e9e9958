"""The controllers' admin dashboard: an overview of every controller's state first, then what each
controller is set to, what its runs did, who holds it.

Read-only except for "dry-run now", which goes through the runner like every other run.
A fixed number of queries whatever the history size (the reads are in
reconcilers.selectors): one window query for the recent runs of every controller
(bounded per controller), one for each controller's last dry run, one each for configs,
states and the pause switch; the overview adds six more (reconcilers.selectors.controllers_overview).
The charts are server-rendered SVG: no JavaScript, no CDN, works in an air-gapped admin, and each
says in text what it shows, so it reads without colour. The page refreshes itself with a meta
refresh (no JavaScript needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.admin import site as admin_site
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST

from controlplane.common.actors import actor_for_user
from reconcilers.models import ReconcileRun, RunOutcome
from reconcilers.registry import UnknownControllerError, controller_get
from reconcilers.runtime.config import EffectiveConfig, paused_globally
from reconcilers.selectors import (
    ControllerOverview,
    ControllerState,
    age_text,
    configs_effective,
    controllers_overview,
    last_dry_runs,
    recent_runs,
    states_by_controller,
)
from reconcilers.services import run_request

RUNS_IN_TABLE = 10  # of the RUNS_PER_CONTROLLER a chart shows
CHART_WIDTH_PX = 520
CHART_HEIGHT_PX = 130
CHART_PAD_PX = 28
OUTCOME_COLOURS = {"success": "#2e7d32", "error": "#c62828", "skipped": "#9e9e9e", "dry_run": "#1565c0"}
DRY_RUN_PERMISSION = "reconcilers.change_reconcilerconfig"
CONFIG_VIEW_PERMISSION = "reconcilers.view_reconcilerconfig"
REFRESH_SECONDS = 15  # the page reloads itself (meta refresh) this often
SPARK_BAR_PX = 4
SPARK_HEIGHT_PX = 22
# A symbol beside each state's word, so the state reads without colour too.
STATE_SYMBOLS = {
    ControllerState.OK: "\u2714",  # heavy check mark
    ControllerState.RUNNING: "\u25b6",  # play
    ControllerState.STALE: "\u29d7",  # hourglass
    ControllerState.FAILING: "\u2716",  # heavy multiplication x
    ControllerState.DISABLED: "\u25cb",  # white circle
    ControllerState.PAUSED: "\u23f8",  # pause
    ControllerState.INVALID: "\u26a0",  # warning sign
}


@dataclass
class OverviewRow:
    """One row of the overview table: the selector's facts plus what the page links to."""

    facts: ControllerOverview
    state_symbol: str
    state_class: str
    spark: SafeString
    panel_anchor: str
    config_url: str

    @property
    def last_success_age(self) -> str:
        return age_text(self.facts.last_success_age_seconds)


def items_sparkline_svg(name: str, values: tuple[int, ...]) -> SafeString:
    """Items per hour over the overview window as a bar sparkline; its title and aria label
    carry the numbers, so it is readable without colour (and without seeing it)."""
    top = max(max(values, default=0), 1)
    width = SPARK_BAR_PX * len(values)
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}"/>',
        (
            (
                i * SPARK_BAR_PX,
                SPARK_HEIGHT_PX - max(round(v / top * SPARK_HEIGHT_PX), 1 if v else 0),
                SPARK_BAR_PX - 1,
                max(round(v / top * SPARK_HEIGHT_PX), 1 if v else 0),
            )
            for i, v in enumerate(values)
        ),
    )
    label = f"{name}: items per hour over {len(values)} h, peak {max(values, default=0)}"
    return format_html(
        '<svg class="rc-spark" role="img" aria-label="{label}" width="{w}" height="{h}" viewBox="0 0 {w} {h}"'
        ' xmlns="http://www.w3.org/2000/svg"><title>{label}</title>'
        '<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#999"/><g fill="#555">{bars}</g></svg>',
        label=label,
        w=width,
        h=SPARK_HEIGHT_PX,
        bars=bars,
    )


def overview_rows(*, paused: bool) -> list[OverviewRow]:
    return [
        OverviewRow(
            facts=facts,
            state_symbol=STATE_SYMBOLS.get(facts.state, ""),
            state_class="rc-state-" + facts.state.replace(" ", "-"),
            spark=items_sparkline_svg(facts.name, facts.items_by_hour),
            panel_anchor=f"controller-{facts.name}",
            config_url=_row_url(facts.config_row_id),
        )
        for facts in controllers_overview(paused=paused)
    ]


def _row_url(row_id: int | None) -> str:
    if row_id is None:
        return ""
    try:
        return reverse("admin:reconcilers_reconcilerconfig_change", args=[row_id])
    except NoReverseMatch:
        return ""


@dataclass
class ControllerPanel:
    name: str
    enabled: bool
    interval_seconds: int
    crontab: str
    dry_run: bool
    configured: bool  # False: no config row, the runner uses the defaults shown
    fence: int | None
    lock_holder: str
    granted_at: datetime | None
    last_real_started_at: datetime | None
    last_dry_run: ReconcileRun | None
    runs: list[ReconcileRun] = field(default_factory=list)
    chart: SafeString = field(default_factory=lambda: mark_safe(""))
    config_url: str = ""
    config_error: str = ""  # the row fails its schema: every run is refused
    config_conflicts: tuple[str, ...] = ()

    @property
    def table_runs(self) -> list[ReconcileRun]:
        return self.runs[:RUNS_IN_TABLE]


def _point_value(run: ReconcileRun) -> int:
    """Items a run changed; for a dry run, what it would have changed."""
    if run.dry_run:
        return sum(int(v) for v in (run.would_change or {}).values())
    return run.items


def _point_colour(run: ReconcileRun) -> str:
    if run.dry_run and run.outcome == RunOutcome.SUCCESS:
        return OUTCOME_COLOURS["dry_run"]
    return OUTCOME_COLOURS.get(run.outcome, OUTCOME_COLOURS["skipped"])


def _point_shape(run: ReconcileRun) -> SafeString:
    """Size, fill and dash tell the outcomes apart without colour: success a filled dot, error a
    large ring, skipped a small dot, dry run a dashed ring."""
    colour = _point_colour(run)
    if run.dry_run and run.outcome == RunOutcome.SUCCESS:
        return format_html(
            'r="4" fill="#fff" stroke="{}" stroke-width="1.5" stroke-dasharray="2 1.5"', colour
        )
    if run.outcome == RunOutcome.ERROR:
        return format_html('r="5" fill="#fff" stroke="{}" stroke-width="2.5"', colour)
    if run.outcome == RunOutcome.SKIPPED:
        return format_html('r="2" fill="{}"', colour)
    return format_html('r="3.5" fill="{}"', colour)


def items_chart_svg(name: str, runs: list[ReconcileRun]) -> SafeString:
    """Items per run over time as inline SVG: a line through real runs, one mark per run
    (a green dot for success, a large red ring for an error, a small grey dot for a skip, a
    dashed blue ring for a dry run at its would-change total); each mark's title says it in words."""
    points = sorted((r for r in runs), key=lambda r: (r.started_at, r.pk))
    width, height, pad = CHART_WIDTH_PX, CHART_HEIGHT_PX, CHART_PAD_PX
    if not points:
        return format_html(
            '<svg class="rc-chart" role="img" aria-label="{} has no runs yet" width="{}" height="{}">'
            '<text x="{}" y="{}" fill="#777">no runs yet</text></svg>',
            name,
            width,
            height,
            pad,
            height // 2,
        )
    start, end = points[0].started_at, points[-1].started_at
    span = max((end - start).total_seconds(), 1.0)
    top = max(max(_point_value(r) for r in points), 1)

    def x(run: ReconcileRun) -> float:
        if len(points) == 1:
            return width / 2
        return pad + (run.started_at - start).total_seconds() / span * (width - 2 * pad)

    def y(value: int) -> float:
        return height - pad - value / top * (height - 2 * pad)

    line = " ".join(
        f"{x(r):.1f},{y(r.items):.1f}" for r in points if not r.dry_run and r.outcome != "skipped"
    )
    dots = format_html_join(
        "",
        '<circle cx="{}" cy="{}" {}><title>{} {}{} items={}</title></circle>',
        (
            (
                f"{x(r):.1f}",
                f"{y(_point_value(r)):.1f}",
                _point_shape(r),
                r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.outcome,
                f" ({r.reason})" if r.reason else (" (dry run)" if r.dry_run else ""),
                _point_value(r),
            )
            for r in points
        ),
    )
    return format_html(
        '<svg class="rc-chart" role="img" aria-label="items per run of {name}" width="{w}" height="{h}"'
        ' viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
        '<line x1="{p}" y1="{b}" x2="{r}" y2="{b}" stroke="#bbb"/>'
        '<line x1="{p}" y1="{p}" x2="{p}" y2="{b}" stroke="#bbb"/>'
        '<text x="2" y="{ty}" font-size="10" fill="#555">{top}</text>'
        '<text x="2" y="{b}" font-size="10" fill="#555">0</text>'
        '<text x="{p}" y="{lb}" font-size="10" fill="#555">{first}</text>'
        '<text x="{r}" y="{lb}" font-size="10" fill="#555" text-anchor="end">{last}</text>'
        '<polyline class="rc-items" points="{line}" fill="none" stroke="#2e7d32" stroke-width="1.5"/>'
        "{dots}</svg>",
        name=name,
        w=width,
        h=height,
        p=pad,
        b=height - pad,
        r=width - pad,
        ty=pad + 4,
        lb=height - 8,
        top=top,
        first=start.strftime("%m-%d %H:%M"),
        last=end.strftime("%m-%d %H:%M"),
        line=line,
        dots=dots,
    )


def _config_url(config: EffectiveConfig) -> str:
    return _row_url(config.row_id)


def controller_panels() -> list[ControllerPanel]:
    configs = configs_effective()
    names = list(configs)
    states = states_by_controller(names)
    runs = recent_runs(names)
    dry_runs = last_dry_runs(names)
    panels = []
    for name, config in configs.items():
        state = states.get(name)
        panel = ControllerPanel(
            name=name,
            enabled=config.enabled,
            interval_seconds=config.interval_seconds,
            crontab=config.schedule_text() if config.crontab else "",
            dry_run=config.dry_run,
            configured=config.configured,
            fence=state.fence if state else None,
            lock_holder=state.lock_holder if state else "",
            granted_at=state.granted_at if state else None,
            last_real_started_at=state.last_real_started_at if state else None,
            last_dry_run=dry_runs.get(name),
            runs=runs.get(name, []),
            config_url=_config_url(config),
            config_error=config.error,
            config_conflicts=config.conflicts,
        )
        panel.chart = items_chart_svg(name, panel.runs)
        panels.append(panel)
    return panels


def _can_dry_run(request: HttpRequest) -> bool:
    return bool(
        request.user.is_active and request.user.is_staff and request.user.has_perm(DRY_RUN_PERMISSION)
    )


@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Staff with the view (or change) permission on reconciler configs (admin_site.admin_view
    in the URLconf does the staff check)."""
    if not (request.user.has_perm(CONFIG_VIEW_PERMISSION) or request.user.has_perm(DRY_RUN_PERMISSION)):
        raise PermissionDenied
    paused = paused_globally()
    context: dict[str, Any] = {
        **admin_site.each_context(request),
        "title": "Reconciler dashboard",
        "overview": overview_rows(paused=paused),
        "refresh_seconds": REFRESH_SECONDS,
        "panels": controller_panels(),
        "paused": paused,
        "can_dry_run": _can_dry_run(request),
        "colours": OUTCOME_COLOURS,
    }
    return render(request, "reconcilers/dashboard.html", context)


@require_POST
def dry_run_now(request: HttpRequest, name: str) -> HttpResponse:
    """Run one dry run of `name` now, through the runner (lock and all), and report it."""
    if not _can_dry_run(request):
        raise PermissionDenied
    try:
        controller_get(name)
    except UnknownControllerError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("reconcilers-dashboard"))
    # Exactly the admin action: forced past pause and disabled, never past the lock, and
    # sent to a worker (or run here in `inprocess` mode).
    outcome = run_request(name, actor=actor_for_user(request.user), dry_run=True)
    if outcome.summary is not None:
        level = messages.SUCCESS if outcome.summary.outcome == RunOutcome.SUCCESS else messages.WARNING
        messages.add_message(request, level, outcome.summary.describe())
    elif outcome.sent:
        messages.success(request, f"{name}: dry run sent to a worker as task {outcome.task_id}")
    else:
        messages.error(request, f"{name}: {outcome.detail}")
    return HttpResponseRedirect(f"{reverse('reconcilers-dashboard')}#controller-{name}")
