"""The reconciler app's services: run a controller by name, change its config, pause them all.

Config writes are validated, audited and move the beat schedule in one transaction; the
admin, the CLI and any API call these, and nothing else writes ReconcilerConfig or the
global pause. A save that would break a rule spanning two controllers (reconcilers.rules)
is refused here, since neither controller may know the other (design.md §2, §5.3).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone as django_timezone
from django_celery_beat.models import PeriodicTasks
from pydantic import ValidationError

from controlplane.audit.services import audit_record
from controlplane.celery import app as celery_app
from controlplane.commands.priority import QueuePriorityPolicy
from controlplane.commands.retries import MAX_RETRIES_DEFAULT
from controlplane.common.db import db_now
from reconcilers.controllers.job_recovery import JobRecoveryParams
from reconcilers.controllers.queue_priority import QueuePriorityParams
from reconcilers.models import GlobalPause, ReconcilerConfig
from reconcilers.registry import controller_get
from reconcilers.rules import FAIRNESS_FIELDS, JOB_RECOVERY, QUEUE_PRIORITY, fairness_conflict
from reconcilers.runtime.config import (
    config_defaults,
    config_from_row,
    params_error_text,
    run_timeout_conflict,
)
from reconcilers.runtime.context import ProgressSink
from reconcilers.runtime.contract import Controller, ControllerParams
from reconcilers.runtime.cron import CrontabError, crontab_parse
from reconcilers.runtime.metrics import Metrics
from reconcilers.runtime.runner import run
from reconcilers.runtime.summary import RunSummary
from reconcilers.schedule import config_ensure, periodic_task_sync
from reconcilers.schedule import task_name as reconcile_task_name
from reconcilers.selectors import config_of

log = logging.getLogger(__name__)

# Allowed ranges (design.md §6), in seconds.
INTERVAL_SECONDS_RANGE = (1, 604800)
RUN_TIMEOUT_SECONDS_RANGE = (1, 86400)
CONFIG_FIELDS = (
    "enabled",
    "interval_seconds",
    "crontab",
    "timezone",
    "dry_run",
    "run_timeout_seconds",
    "params",
)
SCHEDULE_FIELDS = ("interval_seconds", "crontab", "timezone", "run_timeout_seconds")


class ConfigValidationError(ValueError):
    """A config change was rejected; `field` names the offending field (params.<name> for params)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigConflictError(RuntimeError):
    """The row changed between read and write (optimistic lock on `version`); nothing saved."""


def _int_in_range(field: str, value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigValidationError(field, f"must be an integer, got {value!r}")
    low, high = bounds
    if not low <= value <= high:
        raise ConfigValidationError(field, f"must be between {low} and {high}, got {value}")
    return value


def _boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigValidationError(field, f"must be true or false, got {value!r}")
    return value


def config_validate(
    name: str,
    changes: Mapping[str, Any],
    *,
    row: ReconcilerConfig | None = None,
    replace_params: bool = False,
) -> dict[str, Any]:
    """Validate `changes` to controller `name`'s config `row` (read when not given) and return
    them as they will be stored. Raises ConfigValidationError naming the field.

    `params` is merged into the stored params (a scripted change of one key keeps the
    others) unless `replace_params`; either way the row keeps only the keys an operator
    set, and the whole result is validated with the defaults filling the rest, so a change
    that leaves the row invalid is refused. A change to a field that a cross-field
    constraint reads (run timeout within the period, queue-priority's fairness bound below
    job-recovery's max_queue_minutes) is refused when the result breaks it.
    """
    controller = controller_get(name)
    unknown = sorted(set(changes) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigValidationError(unknown[0], "is not a configurable field")
    if row is None:
        row = ReconcilerConfig.objects.filter(controller=name).first()
    current = _snapshot(row) if row is not None else config_defaults(controller)
    clean: dict[str, Any] = {}
    params: ControllerParams | None = None
    for field, value in changes.items():
        if field == "interval_seconds":
            clean[field] = _int_in_range(field, value, INTERVAL_SECONDS_RANGE)
        elif field == "run_timeout_seconds":
            clean[field] = _int_in_range(field, value, RUN_TIMEOUT_SECONDS_RANGE)
        elif field in ("enabled", "dry_run"):
            clean[field] = _boolean(field, value)
        elif field in ("crontab", "timezone"):
            if not isinstance(value, str):
                raise ConfigValidationError(field, f"must be a string, got {value!r}")
            clean[field] = " ".join(value.split()) if field == "crontab" else value.strip()
        elif field == "params":
            if not isinstance(value, Mapping):
                raise ConfigValidationError("params", "must be a JSON object")
            stored = current["params"] if isinstance(current["params"], dict) else {}
            merged = dict(value) if replace_params else {**stored, **value}
            params = _params_validate(controller, merged)
            dumped = params.model_dump(mode="json")
            clean[field] = {key: dumped[key] for key in merged}
    after = {**current, **clean}
    period = after["interval_seconds"]
    if {"crontab", "timezone"} & set(clean) and after["crontab"]:
        try:
            cron = crontab_parse(after["crontab"], after["timezone"] or "UTC")
        except CrontabError as exc:
            field = "timezone" if "time zone" in str(exc) else "crontab"
            raise ConfigValidationError(field, str(exc)) from None
        period = cron.shortest_gap_seconds(django_timezone.now())
    elif after["crontab"]:
        period = _crontab_shortest_period(after["crontab"], after["timezone"], period)
    if "timezone" in clean and not after["crontab"]:
        try:
            crontab_parse("* * * * *", after["timezone"])
        except CrontabError as exc:
            raise ConfigValidationError("timezone", str(exc)) from None
    if set(SCHEDULE_FIELDS) & set(clean):
        conflict = run_timeout_conflict(after["run_timeout_seconds"], period)
        if conflict:
            moved = [
                field for field in ("run_timeout_seconds", "crontab", "interval_seconds") if field in clean
            ]
            raise ConfigValidationError((moved or ["run_timeout_seconds"])[0], f"refused: {conflict}")
    if params is not None and name in FAIRNESS_FIELDS:
        _fairness_check(name, params, changes["params"])
    return clean


def _crontab_shortest_period(crontab: str, zone: str, fallback: int) -> int:
    try:
        return crontab_parse(crontab, zone or "UTC").shortest_gap_seconds(django_timezone.now())
    except CrontabError:  # a stored bad crontab: the row is invalid and reported as such
        return fallback


def _params_validate(controller: Controller, raw: Mapping[str, Any]) -> ControllerParams:
    try:
        return controller.validate_params(raw)
    except ValidationError as exc:
        where, message = params_error_text(exc).split(": ", 1)
        raise ConfigValidationError(where, message) from None


def _fairness_check(name: str, params: ControllerParams, changed: Mapping[str, Any]) -> None:
    """Refuse params that break the fairness rule against the other side's config in effect."""
    other = JOB_RECOVERY if name == QUEUE_PRIORITY else QUEUE_PRIORITY
    conflict = fairness_conflict({name: params, other: config_of(other).params})
    if conflict:
        moved = [key for key in FAIRNESS_FIELDS[name] if key in changed] or ["params"]
        field = f"params.{moved[0]}" if moved[0] != "params" else "params"
        raise ConfigValidationError(field, f"refused: {conflict}")


def config_warnings(name: str, params: Mapping[str, Any]) -> list[str]:
    """The controller's advice that does not block a save, e.g. retention below a year (empty
    if the params do not validate)."""
    controller = controller_get(name)
    try:
        return controller.config_warnings(controller.validate_params(params))
    except ValidationError:
        return []


def queue_priority_policy() -> QueuePriorityPolicy:
    """The queue-entry priority policy from queue-priority's config in effect: the source the
    app installs into the commands domain at start (controlplane.commands.priority)."""
    config = config_of("queue-priority")
    params = config.params
    if not isinstance(params, QueuePriorityParams):
        log.error("queue-priority: invalid params, enqueue uses the default policy: %s", config.error)
        return QueuePriorityPolicy()
    return QueuePriorityPolicy(
        plan_base={str(plan): base for plan, base in params.plan_base.items()},
        age_bonus_per_minute=params.age_bonus_per_minute,
        depth_bonus_max=params.depth_bonus_max,
    )


def retry_limit_from_config() -> int:
    """job-recovery's max_retries in effect: the retry limit the app installs into the commands
    domain at start (controlplane.commands.retries)."""
    params = config_of("job-recovery").params
    return params.max_retries if isinstance(params, JobRecoveryParams) else MAX_RETRIES_DEFAULT


def run_controller(
    name: str,
    *,
    dry_run: bool | None = None,
    force: bool = False,
    ignore_brake: bool = False,
    trigger: str = "manual",
    metrics_sink: Metrics | None = None,
    task_id: str = "",
    progress: ProgressSink | None = None,
) -> RunSummary:
    """Run one reconcile of the controller called `name` through the runtime (design.md §4).

    Raises UnknownControllerError before anything runs; after that no exception escapes
    (see `reconcilers.runtime.runner.run`).
    """
    return run(
        controller_get(name),
        dry_run=dry_run,
        force=force,
        ignore_brake=ignore_brake,
        trigger=trigger,
        metrics_sink=metrics_sink,
        task_id=task_id,
        progress=progress,
    )


WORKER_PING_TIMEOUT_SECONDS = 1.0  # an operator waits this long at most to learn no worker is up


@dataclass(frozen=True)
class RunRequest:
    """What an operator's run request did: sent to a worker (`task_id`), ran here (`summary`),
    or nothing (`no_worker`: no worker answered, `detail` says why)."""

    controller: str
    sent: bool = False
    task_id: str = ""
    summary: RunSummary | None = None
    detail: str = ""


def workers_answering(timeout: float = WORKER_PING_TIMEOUT_SECONDS) -> list[str]:
    """Names of the Celery workers that answer a control ping within `timeout` seconds
    (empty when none does, or the broker cannot be reached)."""
    try:
        replies = celery_app.control.ping(timeout=timeout) or []
    except Exception as exc:  # a broker outage: no worker can be reached either
        log.warning("worker ping failed: %s", exc)
        return []
    return sorted(name for reply in replies for name in reply)


def run_request(
    name: str,
    *,
    actor: str,
    dry_run: bool | None = None,
    ignore_brake: bool = False,
) -> RunRequest:
    """An operator's forced run of `name` (Run now, Dry-run now, the brake override;
    design.md §7), audited as `reconciler.run.requested`.

    With RECONCILERS_ADMIN_RUNS=celery (the default) the controller's task is sent to a
    worker, so the run takes the same lock, fence and guards as a scheduled one and never
    runs inside the web request; the audit row and the message carry the same task id, and
    so does the run row the worker writes. When no worker answers a ping within 1 s,
    nothing is sent or audited. With `inprocess` (runcontrollers installs, no broker) the
    run happens here. The caller checks the permission. Raises UnknownControllerError.
    """
    controller = controller_get(name)
    options = {"dry_run": dry_run, "force": True, "ignore_brake": ignore_brake}
    if settings.RECONCILERS_ADMIN_RUNS == "inprocess":
        with transaction.atomic():
            _audit_run_request(controller.name, actor, options, task_id="", via="inprocess")
        summary = run(controller, dry_run=dry_run, force=True, ignore_brake=ignore_brake, trigger="admin")
        return RunRequest(controller=controller.name, summary=summary)
    workers = workers_answering()
    if not workers:
        return RunRequest(
            controller=controller.name,
            detail=(
                f"no Celery worker answered a ping within {WORKER_PING_TIMEOUT_SECONDS:g} s: "
                "nothing was sent. "
                f"Start one (celery -A controlplane worker -Q {settings.RECONCILERS_QUEUE},celery) or run "
                f"`manage.py reconcile {controller.name} --force`."
            ),
        )
    task_id = str(uuid.uuid4())
    with transaction.atomic():  # a message that cannot be sent leaves no audit row behind
        _audit_run_request(controller.name, actor, options, task_id=task_id, via="celery")
        celery_app.send_task(
            reconcile_task_name(controller.name),
            kwargs={**options, "trigger": "admin"},
            task_id=task_id,
            queue=settings.RECONCILERS_QUEUE,
        )
    log.info("%s: run requested by %s, sent as task %s", controller.name, actor, task_id)
    return RunRequest(controller=controller.name, sent=True, task_id=task_id)


def _audit_run_request(name: str, actor: str, options: Mapping[str, Any], *, task_id: str, via: str) -> None:
    audit_record(
        actor=actor,
        action="reconciler.run.requested",
        resource_type="reconciler",
        resource_id=name,
        details={**options, "task_id": task_id, "via": via},
    )


def _snapshot(row: ReconcilerConfig) -> dict[str, Any]:
    return {field: getattr(row, field) for field in CONFIG_FIELDS}


def config_update(
    name: str,
    changes: Mapping[str, Any],
    *,
    actor: str,
    expected_version: int | None = None,
    replace_params: bool = False,
) -> ReconcilerConfig:
    """Validate and apply `changes` to controller `name`'s config, conditional on the row's
    version; write an AuditLog row (reconciler.config.updated, before, after) and sync the
    controller's beat PeriodicTask in the same transaction, then signal the change so a
    running beat picks it up (design.md §4.2).

    `params` merges into the stored params unless `replace_params` (see config_validate).
    Raises ConfigValidationError (nothing saved) or ConfigConflictError (also when
    `expected_version`, the version the caller edited, is no longer current)."""
    controller = controller_get(name)
    with transaction.atomic():
        row = config_ensure(controller)
        if expected_version is not None and row.version != expected_version:
            raise ConfigConflictError(f"{name}: config changed since version {expected_version}, reload")
        clean = config_validate(name, changes, row=row, replace_params=replace_params)
        before = _snapshot(row)
        after = {**before, **clean}
        if after == before:
            return row
        updated = ReconcilerConfig.objects.filter(pk=row.pk, version=row.version).update(
            **clean, version=F("version") + 1, updated_at=db_now()
        )
        if not updated:
            raise ConfigConflictError(f"{name}: config changed concurrently, reload and retry")
        row.refresh_from_db()
        audit_record(
            actor=actor,
            action="reconciler.config.updated",
            resource_type="reconciler",
            resource_id=name,
            details={
                "before": before,
                "after": after,
                "changed": sorted(key for key in after if after[key] != before[key]),
            },
        )
        periodic_task_sync(config_from_row(controller, row))
        PeriodicTasks.update_changed()
    log.info("%s: config updated by %s: %s", name, actor, clean)
    return row


def pause_set(paused: bool, *, actor: str) -> GlobalPause:
    """Set or clear the global pause (every run skips with `paused`), audited."""
    with transaction.atomic():
        switch, _ = GlobalPause.objects.select_for_update().get_or_create(pk=1)
        before = switch.paused
        switch.paused = paused
        switch.changed_by = actor[:200]
        switch.changed_at = db_now()
        switch.save(update_fields=["paused", "changed_by", "changed_at"])
        audit_record(
            actor=actor,
            action="reconciler.pause.updated",
            resource_type="reconciler",
            resource_id="*",
            details={"before": {"paused": before}, "after": {"paused": paused}},
        )
    log.warning("reconcilers %s globally by %s", "paused" if paused else "resumed", actor)
    return switch
