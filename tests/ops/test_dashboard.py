"""The reconcilers admin dashboard: staff only, charts and fences visible, dry-run now, bounded queries."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from controlplane.common.db import db_now
from reconcilers.dashboard import items_chart_svg
from reconcilers.models import GlobalPause, ReconcilerConfig, ReconcilerState, ReconcileRun, RunOutcome

pytestmark = pytest.mark.django_db

URL = "/admin/reconcilers/dashboard/"


@pytest.fixture
def superuser(db: Any) -> User:
    return User.objects.create_superuser("ops-admin", "ops@example.com", "pw-ops-admin-1")


@pytest.fixture
def admin_client(client: Client, superuser: User) -> Client:
    client.force_login(superuser)
    return client


def _runs(name: str, count: int, *, start_minutes_ago: int = 600) -> None:
    base = db_now() - timedelta(minutes=start_minutes_ago)
    ReconcileRun.objects.bulk_create(
        ReconcileRun(
            controller=name,
            started_at=base + timedelta(minutes=i),
            finished_at=base + timedelta(minutes=i, seconds=1),
            outcome=RunOutcome.ERROR if i % 7 == 3 else RunOutcome.SUCCESS,
            reason="exception" if i % 7 == 3 else "",
            items=i % 5,
            steps={"touched": i % 5},
            fence=i + 1,
            worker_host="host-a:1",
        )
        for i in range(count)
    )


def test_staff_sees_every_controller_with_chart_fence_and_dry_run(
    admin_client: Client, controller_names: list[str]
) -> None:
    name = controller_names[0]
    _runs(name, 12)
    ReconcilerState.objects.update_or_create(
        controller=name, defaults={"fence": 4242, "lock_holder": "worker-7:31337", "granted_at": db_now()}
    )
    ReconcileRun.objects.create(
        controller=name,
        started_at=db_now(),
        outcome=RunOutcome.SUCCESS,
        dry_run=True,
        would_change={"marked_offline": 17},
    )
    response = admin_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    for each in controller_names:
        assert f'id="controller-{each}"' in html
    panel = html.split(f'id="controller-{name}"', 1)[1].split('class="rc-panel"', 1)[0]
    assert "4242" in panel
    assert "worker-7:31337" in panel
    assert "marked_offline=17" in panel
    assert '<svg class="rc-chart"' in panel
    assert panel.count("<circle") == 13  # 12 runs and the dry run
    assert "<polyline" in panel
    assert panel.count('class="rc-run"') == 10  # the table shows the newest 10
    assert "Dry-run now" in panel
    assert "Global pause: <strong>off" in html
    assert "<script" not in html.split('id="content-main"', 1)[1]


def test_dashboard_shows_global_pause(admin_client: Client, controller_names: list[str]) -> None:
    GlobalPause.objects.update_or_create(pk=1, defaults={"paused": True})
    html = admin_client.get(URL).content.decode()
    assert "Global pause: <strong>ON" in html


def test_non_staff_and_anonymous_are_refused(client: Client, controller_names: list[str]) -> None:
    assert client.get(URL).status_code == 302
    assert client.get(URL)["Location"].startswith("/admin/login/")
    user = User.objects.create_user("ops-viewer", password="pw-ops-viewer-1")
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    name = controller_names[0]
    response = client.post(reverse("reconcilers-dashboard-dry-run", args=[name]))
    assert response.status_code == 302
    assert not ReconcileRun.objects.filter(controller=name).exists()


def test_staff_without_change_permission_cannot_dry_run(client: Client, controller_names: list[str]) -> None:
    user = User.objects.create_user("ops-staff", password="pw-ops-staff-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_reconcilerconfig"))
    client.force_login(user)
    html = client.get(URL).content.decode()
    assert "Dry-run now" not in html
    name = controller_names[0]
    assert client.post(reverse("reconcilers-dashboard-dry-run", args=[name])).status_code == 403
    assert not ReconcileRun.objects.filter(controller=name).exists()


def test_queries_do_not_grow_with_history(admin_client: Client, controller_names: list[str]) -> None:
    for name in controller_names:
        _runs(name, 3)
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(URL).status_code == 200
    for name in controller_names:
        _runs(name, 120, start_minutes_ago=2000)
    with CaptureQueriesContext(connection) as large:
        assert admin_client.get(URL).status_code == 200
    assert len(large) == len(small)
    run_queries = [q["sql"] for q in large if "reconcilers_reconcilerun" in q["sql"]]
    # Panels: recent runs of all controllers + last dry runs. Overview: last successes, running
    # rows, newest finished run, 24 h totals, 24 h by hour, newest start.
    assert len(run_queries) == 8


def test_dry_run_now_runs_through_the_runner(
    admin_client: Client, controller_names: list[str], redis_client: Any, settings: Any
) -> None:
    settings.RECONCILERS_ADMIN_RUNS = "inprocess"  # the Celery path: tests/runtime/test_admin_runs.py
    name = controller_names[-1]
    response = admin_client.post(reverse("reconcilers-dashboard-dry-run", args=[name]), follow=True)
    assert response.status_code == 200
    run = ReconcileRun.objects.get(controller=name)
    assert run.dry_run is True
    assert run.outcome == RunOutcome.SUCCESS, run.error
    assert run.items == 0
    html = response.content.decode()
    assert f"{name}: dry run success, would change" in html.lower()  # the admin capitalises messages
    panel = html.split(f'id="controller-{name}"', 1)[1]
    assert panel.count('class="rc-run"') >= 1
    assert str(run.fence) in panel


def test_dry_run_now_unknown_controller(admin_client: Client, controller_names: list[str]) -> None:
    response = admin_client.post(reverse("reconcilers-dashboard-dry-run", args=["no-such"]), follow=True)
    assert "unknown controller" in response.content.decode().lower()
    assert not ReconcileRun.objects.exists()


def test_admin_index_links_the_dashboard(admin_client: Client) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert f'href="{URL}"' in html


def test_chart_escapes_and_scales(db: Any) -> None:
    now = db_now()
    runs = [
        ReconcileRun(controller="x", started_at=now - timedelta(minutes=2), outcome="success", items=10),
        ReconcileRun(
            controller="x", started_at=now - timedelta(minutes=1), outcome="error", reason="timeout"
        ),
        ReconcileRun(controller="x", started_at=now, outcome="skipped", reason="locked"),
    ]
    svg = str(items_chart_svg("<evil>", runs))
    assert "<evil>" not in svg
    assert "&lt;evil&gt;" in svg
    assert svg.count("<circle") == 3
    ys = [float(y) for y in re.findall(r'cy="([0-9.]+)"', svg)]
    assert ys[0] < ys[1]  # 10 items sits above 0 items
    assert "no runs yet" in str(items_chart_svg("x", []))


def test_dry_run_now_behaves_like_the_admin_action_past_pause_and_disabled(
    admin_client: Client, controller_names: list[str], redis_client: Any, settings: Any
) -> None:
    settings.RECONCILERS_ADMIN_RUNS = "inprocess"
    name = controller_names[-1]
    GlobalPause.objects.update_or_create(pk=1, defaults={"paused": True})
    ReconcilerConfig.objects.filter(controller=name).update(enabled=False)
    admin_client.post(reverse("reconcilers-dashboard-dry-run", args=[name]))
    run = ReconcileRun.objects.get(controller=name)
    assert (run.outcome, run.dry_run, run.forced) == (RunOutcome.SUCCESS, True, True), run.error


# --- the overview table ---


def _overview_states(html: str) -> dict[str, str]:
    return dict(re.findall(r'id="overview-([a-z0-9-]+)" data-state="([a-z ]+)"', html))


def _success(
    name: str, *, minutes_ago: float = 1, items: int = 0, flags: dict[str, Any] | None = None
) -> None:
    at = db_now() - timedelta(minutes=minutes_ago)
    ReconcileRun.objects.create(
        controller=name,
        started_at=at,
        finished_at=at,
        outcome=RunOutcome.SUCCESS,
        items=items,
        flags=flags or {},
        worker_host="w:1",
    )


def test_overview_shows_each_state_as_text(admin_client: Client, controller_names: list[str]) -> None:
    if len(controller_names) < 5:
        pytest.skip("needs the five controllers")
    ok, running, failing, disabled, invalid = controller_names[:5]
    for name in controller_names:
        _success(name, minutes_ago=0.5)
    ReconcileRun.objects.create(controller=running, started_at=db_now(), outcome=RunOutcome.RUNNING, fence=9)
    ReconcileRun.objects.create(
        controller=failing, started_at=db_now(), finished_at=db_now(), outcome="error", reason="exception"
    )
    ReconcileRun.objects.create(  # a skip after the error does not hide it
        controller=failing, started_at=db_now(), finished_at=db_now(), outcome="skipped", reason="too_soon"
    )
    ReconcilerConfig.objects.filter(controller=disabled).update(enabled=False)
    ReconcilerConfig.objects.filter(controller=invalid).update(params={"no_such_param": 1})
    html = admin_client.get(URL).content.decode()
    states = _overview_states(html)
    assert states == {
        ok: "ok",
        running: "running",
        failing: "failing",
        disabled: "disabled",
        invalid: "invalid config",
    }
    row = html.split(f'id="overview-{ok}"', 1)[1].split("</tr>", 1)[0]
    assert "\u2714 ok" in row  # a symbol beside the word: readable without colour
    assert f'href="#controller-{ok}"' in row  # links to its panel
    assert "/change/" in row  # and to its config
    assert '<meta http-equiv="refresh"' in html

    GlobalPause.objects.update_or_create(pk=1, defaults={"paused": True})
    states = _overview_states(admin_client.get(URL).content.decode())
    assert states[invalid] == "invalid config"
    assert {states[name] for name in controller_names if name != invalid} == {"paused"}


def test_overview_stale_counts_and_brake(admin_client: Client, controller_names: list[str]) -> None:
    name = controller_names[0]
    interval = ReconcilerConfig.objects.get(controller=name).interval_seconds
    ReconcilerConfig.objects.filter(controller=name).update(updated_at=db_now() - timedelta(days=30))
    _success(name, minutes_ago=4 * interval / 60 + 1, items=5, flags={"brake_engaged": True})
    _success(name, minutes_ago=60 * 30, items=1000)  # outside the 24 h window
    ReconcileRun.objects.create(
        controller=name, started_at=db_now(), finished_at=db_now(), outcome="skipped", reason="locked"
    )
    html = admin_client.get(URL).content.decode()
    assert _overview_states(html)[name] == "stale"
    row = html.split(f'id="overview-{name}"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="rc-runs-24h">1</td>' in row  # the skip is not a run
    assert '<td class="rc-errors-24h">0</td>' in row
    assert '<span class="rc-items-24h">5</span>' in row
    assert "ENGAGED" in row
    assert "items per hour over 24 h, peak 5" in row


def test_admin_list_shows_state_and_last_success(admin_client: Client, controller_names: list[str]) -> None:
    name = controller_names[0]
    ReconcileRun.objects.create(  # the newest row is a skip: the list still says ok
        controller=name, started_at=db_now(), finished_at=db_now(), outcome="skipped", reason="too_soon"
    )
    _success(name, minutes_ago=0.2)
    html = admin_client.get(reverse("admin:reconcilers_reconcilerconfig_changelist")).content.decode()
    row = html.split(f">{name}</a>", 1)[1].split("</tr>", 1)[0]
    assert '<td class="field-state">ok</td>' in row
    assert " ago)" in row
    assert "too_soon" not in row
