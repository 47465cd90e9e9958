"""Least privilege in the admin: audit-retention needs its own permission (and a superuser below the
floor), view-only staff get 403 on actions and the dashboard needs the view permission; every
refusal leaves rows and the audit log unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command
from controlplane.tenants.models import Tenant
from reconcilers.models import ReconcilerConfig, ReconcileRun
from reconcilers.privileges import RETENTION_FLOOR_DAYS
from reconcilers.registry import controller_get
from reconcilers.schedule import config_ensure
from tests.controllers.conftest import table_snapshot

NAME = "audit-retention"
CHANGELIST = "/admin/reconcilers/reconcilerconfig/"


def staff_client(username: str, codenames: list[str], *, superuser: bool = False) -> Client:
    if superuser:
        user = User.objects.create_superuser(username, f"{username}@example.com", "pw-for-tests-only")
    else:
        user = User.objects.create_user(username, password="pw-for-tests-only", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


CONFIG_PERMS = ["view_reconcilerconfig", "change_reconcilerconfig"]


@pytest.fixture(autouse=True)
def runs_in_process(settings: Any) -> None:
    """The permission checks come before the run is sent anywhere; in-process runs let the
    tests see the allowed ones in the run history (the Celery path: tests/runtime/test_admin_runs.py)."""
    settings.RECONCILERS_ADMIN_RUNS = "inprocess"


@pytest.fixture
def rows(db: Any) -> dict[str, ReconcilerConfig]:
    return {name: config_ensure(controller_get(name)) for name in (NAME, "token-cleanup")}


def state() -> dict[str, Any]:
    return {
        **table_snapshot(ReconcilerConfig, AuditLog, Command),
        "runs": ReconcileRun.objects.count(),
    }


def change_form(row: ReconcilerConfig, **overrides: Any) -> dict[str, Any]:
    data = {
        "enabled": "on" if row.enabled else "",
        "interval_seconds": str(row.interval_seconds),
        "dry_run": "on" if row.dry_run else "",
        "run_timeout_seconds": str(row.run_timeout_seconds),
        "params": "{}",
        "loaded_version": str(row.version),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v != ""}


def action(client: Client, name: str, pks: list[int], url: str = CHANGELIST) -> Any:
    return client.post(url, {"action": name, "_selected_action": [str(pk) for pk in pks]})


@pytest.mark.django_db
def test_general_config_permission_cannot_change_or_really_run_audit_retention(
    rows: dict[str, ReconcilerConfig],
) -> None:
    client = staff_client("tuner", CONFIG_PERMS)
    row = rows[NAME]
    before = state()
    url = reverse("admin:reconcilers_reconcilerconfig_change", args=[row.pk])
    response = client.post(url, change_form(row, params='{"retention_days": 1}'))
    assert response.status_code == 403
    for name in ("run_now", "run_now_ignore_brake", "disable"):
        assert action(client, name, [row.pk]).status_code == 403, name
    # A mixed selection is refused whole: token-cleanup did not run either.
    assert action(client, "run_now", [rows["token-cleanup"].pk, row.pk]).status_code == 403
    assert state() == before

    # The same user may still dry-run it (deletes nothing) and tune the other controllers.
    assert action(client, "dry_run_now", [row.pk]).status_code == 302
    assert ReconcileRun.objects.filter(controller=NAME, dry_run=True).count() == 1
    other = rows["token-cleanup"]
    other_url = reverse("admin:reconcilers_reconcilerconfig_change", args=[other.pk])
    assert client.post(other_url, change_form(other, interval_seconds="7200")).status_code == 302
    other.refresh_from_db()
    assert other.interval_seconds == 7200


@pytest.mark.django_db
def test_dedicated_permission_changes_retention_but_below_the_floor_needs_a_superuser(
    rows: dict[str, ReconcilerConfig],
) -> None:
    client = staff_client("auditor", [*CONFIG_PERMS, "change_audit_retention"])
    row = rows[NAME]
    url = reverse("admin:reconcilers_reconcilerconfig_change", args=[row.pk])
    before = state()
    response = client.post(url, change_form(row, params=f'{{"retention_days": {RETENTION_FLOOR_DAYS - 1}}}'))
    assert response.status_code == 200  # the form again, with the error on params
    assert "needs a superuser" in response.content.decode()
    assert state() == before

    response = client.post(url, change_form(row, params='{"retention_days": 400}'))
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.params == {"retention_days": 400}
    audit = AuditLog.objects.get(action="reconciler.config.updated", resource_id=NAME)
    assert audit.actor == "user:auditor"
    assert audit.details["after"]["params"] == {"retention_days": 400}
    assert action(client, "run_now", [row.pk]).status_code == 302
    assert ReconcileRun.objects.filter(controller=NAME, dry_run=False).count() == 1

    root = staff_client("root", [], superuser=True)
    response = root.post(
        url, change_form(row, params='{"retention_days": 7}', loaded_version=str(row.version))
    )
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.params == {"retention_days": 7}


@pytest.mark.django_db
def test_view_only_staff_get_403_on_reconciler_and_pause_actions_and_dashboard_dry_run(
    rows: dict[str, ReconcilerConfig],
) -> None:
    client = staff_client("viewer", ["view_reconcilerconfig", "view_globalpause"])
    before = state()
    for name in ("run_now", "dry_run_now", "enable", "disable"):
        assert action(client, name, [rows["token-cleanup"].pk]).status_code == 403, name
    for name in ("pause", "resume"):
        assert action(client, name, [1], url="/admin/reconcilers/globalpause/").status_code == 403, name
    dry_run = reverse("reconcilers-dashboard-dry-run", args=["token-cleanup"])
    assert client.post(dry_run).status_code == 403
    assert client.get(reverse("reconcilers-dashboard")).status_code == 200
    assert state() == before


@pytest.mark.django_db
def test_dashboard_needs_the_config_view_permission(rows: dict[str, ReconcilerConfig]) -> None:
    client = staff_client("stranger", ["view_tenant"])
    assert client.get(reverse("reconcilers-dashboard")).status_code == 403


@pytest.mark.django_db
def test_view_only_staff_get_403_on_the_demo_enqueue_action(make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant()
    viewer = staff_client("tenant-viewer", ["view_tenant"])
    before = state()
    response = action(viewer, "enqueue_demo_jobs", [tenant.pk], url="/admin/tenants/tenant/")
    assert response.status_code == 403
    assert state() == before

    editor = staff_client("tenant-editor", ["view_tenant", "change_tenant"])
    response = action(editor, "enqueue_demo_jobs", [tenant.pk], url="/admin/tenants/tenant/")
    assert response.status_code == 302
    assert Command.objects.filter(tenant=tenant, kind="demo").count() == 10
    audit = AuditLog.objects.get(action="tenant.demo_jobs_enqueued")
    assert (audit.actor, audit.resource_id, audit.details) == (
        "user:tenant-editor",
        str(tenant.pk),
        {"jobs": 10, "kind": "demo"},
    )
