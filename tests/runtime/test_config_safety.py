"""A controller never does more than its operator configured (design.md §4.2): an invalid row
is refused, never replaced by the defaults; defaults come from code; changes merge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import ProgrammingError
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from controlplane.audit.models import AuditLog
from controlplane.common.db import db_now
from reconcilers import checks
from reconcilers.models import ReconcilerConfig, ReconcileRun
from reconcilers.schedule import periodic_task_name, schedule_sync
from reconcilers.selectors import config_of
from reconcilers.services import ConfigValidationError, config_update, run_controller
from tests.runtime.test_metrics import sample, samples

pytestmark = pytest.mark.django_db

RETENTION = "audit-retention"


def old_audit_rows(count: int, days: int = 400) -> list[int]:
    at = db_now() - timedelta(days=days)
    rows = AuditLog.objects.bulk_create(
        AuditLog(created_at=at, actor="user:x", action="test.old", resource_type="t") for _ in range(count)
    )
    return [row.pk for row in rows]


def hand_edit(name: str, **columns: Any) -> None:
    """What an operator with database access does: no validation, no audit."""
    ReconcilerConfig.objects.filter(controller=name).update(**columns)


def test_an_invalid_row_is_refused_not_replaced_by_the_defaults(redis_client: Any) -> None:
    ids = old_audit_rows(5)
    hand_edit(RETENTION, params={"batch_size": 0, "retention_days": 3650})

    summary = run_controller(RETENTION, force=True, trigger="test")  # forced runs do not bypass it

    assert (summary.outcome, summary.reason) == ("error", "invalid_config")
    assert "params.batch_size" in summary.error_text
    run = ReconcileRun.objects.get(pk=summary.run_id)
    assert (run.outcome, run.reason, run.items, run.fence) == ("error", "invalid_config", 0, None)
    assert AuditLog.objects.filter(pk__in=ids).count() == 5  # nothing deleted
    assert not config_of(RETENTION).valid

    # The config gauge, read from the database at scrape time.
    values = samples(Client().get("/metrics").content.decode())
    assert sample(values, "config_invalid", controller=RETENTION) == 1
    assert sample(values, "config_invalid", controller="agent-health") == 0

    # `manage.py check --database default` reports it; a plain check stays quiet.
    with pytest.raises(SystemCheckError, match=r"audit-retention: config row is invalid.*batch_size"):
        call_command("check", "--database", "default")
    call_command("check")

    # The admin list marks the row.
    admin = Client()
    admin.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    page = admin.get(reverse("admin:reconcilers_reconcilerconfig_changelist")).content.decode()
    assert "INVALID, runs refused: params.batch_size" in page

    # With the row gone, the defaults run: 365 days, and the 400-day-old rows go.
    ReconcilerConfig.objects.filter(controller=RETENTION).delete()
    summary = run_controller(RETENTION, force=True, trigger="test")
    assert (summary.outcome, summary.items) == ("success", 5), summary.error_text


def test_schedule_sync_never_copies_an_invalid_row_into_beat() -> None:
    schedule_sync([RETENTION])
    hand_edit(RETENTION, params={"retention_days": "forever"}, interval_seconds=60, enabled=False)
    schedule_sync([RETENTION])
    task = PeriodicTask.objects.select_related("interval").get(name=periodic_task_name(RETENTION))
    assert task.interval is not None
    assert (task.interval.every, task.enabled) == (86400, True)  # the last valid schedule


def test_the_check_is_a_database_check_that_tolerates_missing_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    hand_edit(RETENTION, params={"batch_size": 0})
    assert checks.reconciler_configs_check(databases=None) == []  # plain `check`: no query at all

    def not_migrated() -> None:
        raise ProgrammingError('relation "reconcilers_reconcilerconfig" does not exist')

    monkeypatch.setattr(checks, "configs_effective", not_migrated)
    assert checks.reconciler_configs_check(databases=["default"]) == []


def test_rows_store_only_what_an_operator_set_and_changes_merge() -> None:
    schedule_sync([RETENTION])
    assert ReconcilerConfig.objects.get(controller=RETENTION).params == {}
    config_update(RETENTION, {"params": {"retention_days": 3650}}, actor="user:ops")
    row = config_update(RETENTION, {"params": {"batch_size": 500}}, actor="user:ops")
    assert row.params == {"retention_days": 3650, "batch_size": 500}  # a scripted change keeps the rest
    params = config_of(RETENTION).params
    assert params is not None
    assert params.model_dump() == {"retention_days": 3650, "batch_size": 500, "archive_dir": None}
    # Replacement stays possible, explicitly: what is left out returns to its default.
    row = config_update(RETENTION, {"params": {"batch_size": 800}}, actor="user:ops", replace_params=True)
    assert row.params == {"batch_size": 800}
    audit = (
        AuditLog.objects.filter(action="reconciler.config.updated", resource_id=RETENTION)
        .order_by("pk")
        .last()
    )
    assert audit is not None
    assert audit.details["before"]["params"] == {"retention_days": 3650, "batch_size": 500}


def test_a_merge_that_leaves_the_row_invalid_is_refused() -> None:
    schedule_sync([RETENTION])
    hand_edit(RETENTION, params={"batch_size": 0})
    before = ReconcilerConfig.objects.values().get(controller=RETENTION)
    with pytest.raises(ConfigValidationError) as refused:
        config_update(RETENTION, {"params": {"retention_days": 400}}, actor="user:ops")
    assert refused.value.field == "params.batch_size"
    assert ReconcilerConfig.objects.values().get(controller=RETENTION) == before


def test_a_run_timeout_longer_than_the_period_is_refused_on_save_and_flagged_on_a_row() -> None:
    schedule_sync(["job-recovery"])  # 60 s interval, 60 s run timeout
    with pytest.raises(ConfigValidationError, match="longer than the period") as refused:
        config_update("job-recovery", {"run_timeout_seconds": 61}, actor="user:ops")
    assert refused.value.field == "run_timeout_seconds"
    with pytest.raises(ConfigValidationError) as shorter:
        config_update("job-recovery", {"interval_seconds": 30}, actor="user:ops")
    assert shorter.value.field == "interval_seconds"
    config_update("job-recovery", {"interval_seconds": 30, "run_timeout_seconds": 30}, actor="user:ops")

    hand_edit("job-recovery", run_timeout_seconds=300)  # an existing row that breaks it
    config = config_of("job-recovery")
    assert config.valid
    assert config.conflicts == ("run_timeout_seconds (300) is longer than the period (30 s)",)
    config_update("job-recovery", {"enabled": False}, actor="user:ops")  # unrelated saves still work
    with pytest.raises(SystemCheckError):  # a warning, reported as such
        call_command("check", "--database", "default", "--fail-level", "WARNING")
