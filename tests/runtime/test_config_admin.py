"""Config service, beat sync and the admin: validation naming the field, audit, schedule without restart."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from controlplane.audit.models import AuditLog
from controlplane.celery import app
from reconcilers.models import GlobalPause, ReconcilerConfig, ReconcileRun
from reconcilers.schedule import periodic_task_name, schedule_sync, task_name
from reconcilers.services import ConfigValidationError, config_update
from reconcilers.signals import on_beat_init, on_post_migrate
from tests.runtime.controllers import Sleeper, writes

pytestmark = pytest.mark.usefixtures("test_controllers")


def change_url(name: str) -> str:
    pk = ReconcilerConfig.objects.get(controller=name).pk
    return reverse("admin:reconcilers_reconcilerconfig_change", args=[pk])


def form_data(name: str, **overrides: Any) -> dict[str, Any]:
    row = ReconcilerConfig.objects.get(controller=name)
    data = {
        "enabled": "on" if row.enabled else "",
        "interval_seconds": row.interval_seconds,
        "dry_run": "on" if row.dry_run else "",
        "run_timeout_seconds": row.run_timeout_seconds,
        "params": json.dumps(row.params),
        "loaded_version": row.version,
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value != ""}


@pytest.fixture
def staff(db: Any) -> Client:
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def task_for(name: str) -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(name=periodic_task_name(name))


def test_seeded_rows_match_the_controller_defaults() -> None:
    row = ReconcilerConfig.objects.get(controller=Sleeper.name)
    assert (row.enabled, row.interval_seconds, row.dry_run, row.run_timeout_seconds) == (True, 60, False, 60)
    assert row.params == {}  # every parameter takes its default from code until an operator sets it
    task = task_for(Sleeper.name)
    assert task.task == "reconcilers.test_sleeper"
    assert task.interval.every == 60
    assert task.expire_seconds == 60
    assert task.queue == "reconcilers"
    assert GlobalPause.objects.filter(pk=1).exists()


def test_post_migrate_and_beat_start_are_idempotent_and_repair_hand_edits() -> None:
    on_post_migrate(sender=None)
    on_post_migrate(sender=None)
    assert ReconcilerConfig.objects.filter(controller=Sleeper.name).count() == 1
    assert PeriodicTask.objects.filter(task="reconcilers.test_sleeper").count() == 1
    # An operator edits the beat row by hand.
    task = task_for(Sleeper.name)
    task.interval.every = 5
    task.interval.save()
    PeriodicTask.objects.filter(pk=task.pk).update(queue="elsewhere", enabled=False, expire_seconds=None)
    on_beat_init()
    task = task_for(Sleeper.name)
    assert (task.interval.every, task.queue, task.enabled, task.expire_seconds) == (
        60,
        "reconcilers",
        True,
        60,
    )
    # A deleted config row comes back with the defaults.
    ReconcilerConfig.objects.filter(controller="test-other").delete()
    schedule_sync()
    assert ReconcilerConfig.objects.get(controller="test-other").interval_seconds == 60


def test_config_update_audits_and_moves_only_its_own_schedule() -> None:
    other = task_for("test-other")
    # Someone pointed a foreign task at test-sleeper's schedule: it must not be retimed.
    foreign = PeriodicTask.objects.create(
        name="foreign", task="x.y", interval=task_for(Sleeper.name).interval
    )
    before_version = ReconcilerConfig.objects.get(controller=Sleeper.name).version
    row = config_update(
        Sleeper.name, {"interval_seconds": 300, "params": {"threshold": 7}}, actor="user:alice"
    )
    assert row.version == before_version + 1
    assert row.params == {"threshold": 7}  # only what an operator set
    task = task_for(Sleeper.name)
    assert task.interval.every == 300
    assert task.expire_seconds == 300
    foreign.refresh_from_db()
    assert foreign.interval.every == 60
    assert task_for("test-other").interval_id == other.interval_id
    assert task_for("test-other").interval.every == 60
    audit = AuditLog.objects.get(action="reconciler.config.updated", resource_id=Sleeper.name)
    assert audit.actor == "user:alice"
    assert audit.details["before"]["interval_seconds"] == 60
    assert audit.details["after"]["interval_seconds"] == 300
    assert audit.details["after"]["params"]["threshold"] == 7


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": 604801}, "interval_seconds"),
        ({"run_timeout_seconds": 0}, "run_timeout_seconds"),
        ({"enabled": "yes"}, "enabled"),
        ({"params": {"threshold": -1}}, "params.threshold"),
        ({"params": {"nonsense": 1}}, "params.nonsense"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_config_is_rejected_naming_the_field(changes: dict[str, Any], field: str) -> None:
    before = ReconcilerConfig.objects.values().get(controller=Sleeper.name)
    with pytest.raises(ConfigValidationError, match=field) as caught:
        config_update(Sleeper.name, {"dry_run": True, **changes}, actor="user:alice")
    assert caught.value.field == field
    assert ReconcilerConfig.objects.values().get(controller=Sleeper.name) == before
    assert not AuditLog.objects.filter(action="reconciler.config.updated").exists()
    assert task_for(Sleeper.name).interval.every == 60


@pytest.mark.django_db(transaction=True)
def test_admin_interval_change_reaches_a_running_beat_scheduler(staff: Client) -> None:
    scheduler = DatabaseScheduler(app=app)
    entry = scheduler.schedule[periodic_task_name(Sleeper.name)]
    assert entry.schedule.run_every == timedelta(seconds=60)
    assert entry.task == task_name(Sleeper.name)
    time.sleep(0.01)

    data = form_data(Sleeper.name, interval_seconds=17, run_timeout_seconds=17)
    response = staff.post(change_url(Sleeper.name), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert task_for(Sleeper.name).interval.every == 17

    entry = scheduler.schedule[periodic_task_name(Sleeper.name)]  # same scheduler instance: no restart
    assert entry.schedule.run_every == timedelta(seconds=17)
    assert entry.options.get("expires") == 17
    assert entry.options.get("queue") == "reconcilers"


def test_admin_rejects_invalid_config_naming_the_field(staff: Client) -> None:
    before = ReconcilerConfig.objects.values().get(controller=Sleeper.name)
    response = staff.post(change_url(Sleeper.name), form_data(Sleeper.name, interval_seconds=0))
    assert response.status_code == 200
    assert "interval_seconds" in response.content.decode()
    assert "errornote" in response.content.decode()
    response = staff.post(change_url(Sleeper.name), form_data(Sleeper.name, params='{"threshold": -3}'))
    assert response.status_code == 200
    assert "params.threshold" in response.content.decode()
    assert ReconcilerConfig.objects.values().get(controller=Sleeper.name) == before
    assert not AuditLog.objects.filter(action="reconciler.config.updated").exists()


def test_admin_save_shows_warnings_without_blocking(staff: Client) -> None:
    response = staff.post(
        change_url(Sleeper.name), form_data(Sleeper.name, params='{"threshold": 80}'), follow=True
    )
    assert response.status_code == 200
    assert ReconcilerConfig.objects.get(controller=Sleeper.name).params["threshold"] == 80
    assert any("threshold above 50" in str(m) for m in response.context["messages"])


def test_admin_refuses_a_stale_form(staff: Client) -> None:
    data = form_data(Sleeper.name, interval_seconds=90)
    config_update(Sleeper.name, {"dry_run": True}, actor="user:bob")
    response = staff.post(change_url(Sleeper.name), data)
    assert response.status_code == 200
    assert "reload" in response.content.decode()
    assert ReconcilerConfig.objects.get(controller=Sleeper.name).interval_seconds == 60


def test_non_staff_and_unprivileged_staff_cannot_change_config(db: Any) -> None:
    url = change_url(Sleeper.name)
    data = form_data(Sleeper.name, interval_seconds=5)
    plain = User.objects.create_user("plain", password="pw")
    client = Client()
    client.force_login(plain)
    response = client.post(url, data)
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reconcilerconfig"))
    client.force_login(viewer)
    assert client.get(url).status_code == 200
    assert client.post(url, data).status_code == 403
    assert ReconcilerConfig.objects.get(controller=Sleeper.name).interval_seconds == 60


def test_admin_list_and_actions(staff: Client, settings: Any) -> None:
    settings.RECONCILERS_ADMIN_RUNS = "inprocess"  # the Celery path: tests/runtime/test_admin_runs.py
    changelist = reverse("admin:reconcilers_reconcilerconfig_changelist")
    pk = ReconcilerConfig.objects.get(controller=Sleeper.name).pk

    def act(action: str) -> Any:
        return staff.post(changelist, {"action": action, "_selected_action": [pk]}, follow=True)

    act("dry_run_now")
    assert writes() == 0
    assert ReconcileRun.objects.get(controller=Sleeper.name).dry_run is True
    act("run_now")
    assert writes() == 1
    act("disable")
    assert ReconcilerConfig.objects.get(controller=Sleeper.name).enabled is False
    assert task_for(Sleeper.name).enabled is False
    act("enable")
    assert ReconcilerConfig.objects.get(controller=Sleeper.name).enabled is True
    assert AuditLog.objects.filter(action="reconciler.config.updated", actor="user:ops").count() == 2
    page = staff.get(changelist).content.decode()
    assert Sleeper.name in page
    assert '<td class="field-state">ok</td>' in page
    runs = staff.get(reverse("admin:reconcilers_reconcilerun_changelist") + "?outcome__exact=success")
    assert runs.status_code == 200


def test_admin_global_pause_toggle(staff: Client) -> None:
    changelist = reverse("admin:reconcilers_globalpause_changelist")
    staff.post(changelist, {"action": "pause", "_selected_action": [1]})
    assert GlobalPause.objects.get(pk=1).paused is True
    assert AuditLog.objects.filter(action="reconciler.pause.updated", actor="user:ops").exists()
    staff.post(changelist, {"action": "resume", "_selected_action": [1]})
    assert GlobalPause.objects.get(pk=1).paused is False


def test_beat_admin_shows_reconciler_tasks_read_only(staff: Client) -> None:
    task = task_for(Sleeper.name)
    url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    assert staff.get(url).status_code == 200
    response = staff.post(url, {"name": task.name, "task": task.task, "interval": task.interval_id})
    assert response.status_code == 403
    changelist = reverse("admin:django_celery_beat_periodictask_changelist")
    staff.post(changelist, {"action": "disable_tasks", "_selected_action": [task.pk]})
    assert task_for(Sleeper.name).enabled is True
    schedule = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    mine = PeriodicTask.objects.create(name="mine", task="x.y", interval=schedule)
    staff.post(changelist, {"action": "disable_tasks", "_selected_action": [mine.pk]})
    mine.refresh_from_db()
    assert mine.enabled is False
