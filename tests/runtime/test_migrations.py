"""Upgrades keep an install's rows and grants: the renames move no data and keep permissions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from controlplane.agents.models import Agent, AgentHealth
from controlplane.audit.services import audit_record
from controlplane.common.db import db_now
from reconcilers.controllers.agent_health import AgentHealthParams
from reconcilers.models import GlobalPause, ReconcilerConfig
from reconcilers.selectors import config_of
from reconcilers.services import ConfigValidationError, config_update, run_controller

BEFORE_RENAMES = ("reconcilers", "0002_state_database_lease_lock")


def migrate_to(*targets: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(list(targets))


def latest() -> tuple[str, str]:
    executor = MigrationExecutor(connection)
    return next(node for node in executor.loader.graph.leaf_nodes() if node[0] == "reconcilers")


@pytest.mark.django_db(transaction=True)
def test_renames_keep_rows_and_the_pause_permissions() -> None:
    migrate_to(BEFORE_RENAMES)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE reconcilers_runtimeswitch SET paused = %s WHERE id = 1", [True])
    operators = Group.objects.create(name="operators")
    operators.permissions.add(Permission.objects.get(codename="change_runtimeswitch"))

    migrate_to(latest())

    assert GlobalPause.objects.get(pk=1).paused is True
    assert ReconcilerConfig.objects.filter(controller="agent-health").exists()
    codenames = set(operators.permissions.values_list("codename", flat=True))
    assert codenames == {"change_globalpause"}
    assert not Permission.objects.filter(codename__endswith="_runtimeswitch").exists()


BEFORE_PARAMS_CLEANUP = ("reconcilers", "0004_run_outcome_running_and_new_reasons")
# What earlier releases wrote into every row: all params, at the defaults of their day.
EARLIER_ROWS = {
    "agent-health": {
        "stale_timeout_seconds": 90,
        "lease_grace_seconds": 0,
        "max_offline_fraction": 0.5,
        "brake_min_agents": 10,
    },
    "audit-retention": {"retention_days": 3650, "batch_size": 10000, "archive_dir": None},
    "token-cleanup": {"grace_days": 7},
}


@pytest.mark.django_db(transaction=True)
def test_upgrade_keeps_only_operator_set_params_so_the_heartbeat_setting_moves_the_default(
    make_agent: Callable[..., Agent], redis_client: Any
) -> None:
    migrate_to(BEFORE_PARAMS_CLEANUP)
    for name, params in EARLIER_ROWS.items():
        ReconcilerConfig.objects.filter(controller=name).update(params=params)
    # Operators chose a ten-year retention, and set batch_size back to its default after a
    # trial; token-cleanup's grace_days differs from its default (kept whatever the audit says).
    for before, after in (
        ({"retention_days": 365}, {"retention_days": 3650}),
        ({"batch_size": 5000}, {"batch_size": 10000}),
    ):
        audit_record(
            actor="user:ops",
            action="reconciler.config.updated",
            resource_type="reconciler",
            resource_id="audit-retention",
            details={
                "before": {"params": {**EARLIER_ROWS["audit-retention"], **before}},
                "after": {"params": {**EARLIER_ROWS["audit-retention"], **after}},
            },
        )

    with override_settings(AGENT_HEARTBEAT_INTERVAL_SECONDS=30):
        migrate_to(latest())

    stored = dict(ReconcilerConfig.objects.values_list("controller", "params"))
    assert stored["agent-health"] == {}
    assert stored["audit-retention"] == {"retention_days": 3650, "batch_size": 10000}
    assert stored["token-cleanup"] == {"grace_days": 7}

    # Restarted with a 60 s heartbeat: the default stale timeout follows the setting.
    with override_settings(AGENT_HEARTBEAT_INTERVAL_SECONDS=60):
        params = config_of("agent-health").params
        assert isinstance(params, AgentHealthParams)
        assert params.stale_timeout_seconds >= 120
        quiet = make_agent(last_seen_at=db_now() - timedelta(seconds=100))
        summary = run_controller("agent-health", force=True, trigger="test")
        assert summary.outcome == "success", summary.error_text
        quiet.refresh_from_db()
        assert quiet.health == AgentHealth.ONLINE  # one missed heartbeat is not an outage
        with pytest.raises(ConfigValidationError) as refused:
            config_update("agent-health", {"params": {"stale_timeout_seconds": 90}}, actor="user:ops")
        assert refused.value.field == "params.stale_timeout_seconds"


BEFORE_ARCHIVE_ROOT = ("reconcilers", "0007_run_celery_task_id")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("where", "expected"),
    [("inside", "archives/audit"), ("root", "."), ("outside", None)],
)
def test_upgrade_makes_an_absolute_archive_dir_inside_the_root_relative(
    tmp_path: Any, where: str, expected: str | None, capsys: Any
) -> None:
    root = tmp_path / "root"
    (root / "archives" / "audit").mkdir(parents=True)
    value = {
        "inside": str(root / "archives" / "audit"),
        "root": str(root),
        "outside": str(tmp_path / "elsewhere"),
    }[where]
    migrate_to(BEFORE_ARCHIVE_ROOT)
    ReconcilerConfig.objects.filter(controller="audit-retention").update(
        params={"retention_days": 400, "archive_dir": value}
    )
    version = ReconcilerConfig.objects.get(controller="audit-retention").version

    with override_settings(AUDIT_ARCHIVE_ROOT=str(root)):
        migrate_to(latest())
        row = ReconcilerConfig.objects.get(controller="audit-retention")
        config = config_of("audit-retention")

    if expected is None:
        assert row.params == {"retention_days": 400, "archive_dir": value}
        assert row.version == version
        assert not config.valid  # runs refused: nothing is deleted unarchived
        assert value in capsys.readouterr().out
    else:
        assert row.params == {"retention_days": 400, "archive_dir": expected}
        assert row.version == version + 1
        assert config.valid, config.error
