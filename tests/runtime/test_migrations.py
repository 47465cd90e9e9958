"""Upgrades keep an install's rows and grants: the renames move no data and keep permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

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

    from reconcilers.models import GlobalPause, ReconcilerConfig

    assert GlobalPause.objects.get(pk=1).paused is True
    assert ReconcilerConfig.objects.filter(controller="agent-health").exists()
    codenames = set(operators.permissions.values_list("codename", flat=True))
    assert codenames == {"change_globalpause"}
    assert not Permission.objects.filter(codename__endswith="_runtimeswitch").exists()
