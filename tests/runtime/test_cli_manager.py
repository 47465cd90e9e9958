"""CLI commands and the in-process manager."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from reconcilers.models import ReconcileRun
from reconcilers.registry import controller_get
from reconcilers.runtime.manager import Manager
from reconcilers.services import config_update
from tests.runtime.conftest import REPO_ROOT, entry, subprocess_env
from tests.runtime.controllers import Sleeper, writes
from tests.runtime.test_runner import CLI_KEYS

pytestmark = pytest.mark.usefixtures("test_controllers")


def reconcile(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("reconcile", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_reconcile_json_has_every_key_and_exit_codes() -> None:
    code, out, _ = reconcile(Sleeper.name, "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) == CLI_KEYS
    assert (data["outcome"], data["reason"], data["items"]) == ("success", None, 1)
    assert data["steps"] == {"written": 1}
    assert data["would_change"] == {}

    code, out, _ = reconcile(Sleeper.name, "--json")  # too soon: skipped still exits 0
    assert code == 0
    assert (json.loads(out)["outcome"], json.loads(out)["reason"]) == ("skipped", "too_soon")

    code, out, _ = reconcile(Sleeper.name, "--json", "--dry-run")
    data = json.loads(out)
    assert (code, data["dry_run"], data["items"], data["would_change"]) == (0, True, 0, {"written": 1})

    code, out, err = reconcile("test-raiser", "--json")
    assert code == 1
    assert (json.loads(out)["outcome"], json.loads(out)["reason"]) == ("error", "exception")

    code, out, err = reconcile("test-raiser")
    assert code == 1
    assert "boom from the test controller" in err
    assert writes() == 1


def test_reconcile_force_runs_when_paused_or_disabled() -> None:
    config_update(Sleeper.name, {"enabled": False}, actor="user:test")
    code, out, _ = reconcile(Sleeper.name, "--json")
    assert (code, json.loads(out)["reason"]) == (0, "disabled")
    code, out, _ = reconcile(Sleeper.name, "--json", "--force")
    assert (code, json.loads(out)["outcome"]) == (0, "success")
    assert ReconcileRun.objects.get(pk__isnull=False, outcome="success").forced is True


def test_reconcile_unknown_name_exits_2_listing_the_names() -> None:
    env = subprocess_env()
    result = subprocess.run(
        [sys.executable, "manage.py", "reconcile", "nosuch", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "valid names" in result.stderr
    assert result.stdout == ""
    # With the test controllers installed, they are among the names listed.
    with pytest.raises(CommandError) as caught:
        call_command("reconcile", "nosuch")
    assert caught.value.returncode == 2
    assert Sleeper.name in str(caught.value)
    assert "test-raiser" in str(caught.value)


def test_reconcile_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "reconcile", "--bogus"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2


def test_reconcilers_lists_every_controller() -> None:
    reconcile(Sleeper.name)
    out = StringIO()
    call_command("reconcilers", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["name", "enabled", "interval", "dry_run", "last", "run", "outcome"]
    sleeper = next(line for line in lines if line.startswith(Sleeper.name))
    assert "60s" in sleeper
    assert "success" in sleeper
    assert any(line.startswith("test-other") and "never" in line for line in lines)


def test_manager_registers_and_rejects_duplicates() -> None:
    manager = Manager()
    manager.register(controller_get(Sleeper.name))
    manager.register(controller_get("test-other"))
    with pytest.raises(ValueError, match="already registered"):
        manager.register(controller_get(Sleeper.name))
    assert manager.controller_count() == 2
    assert manager.controller_names() == [Sleeper.name, "test-other"]


@pytest.mark.django_db(transaction=True)
def test_manager_runs_each_controller_at_its_interval_and_stops_cleanly() -> None:
    config_update(Sleeper.name, {"interval_seconds": 1, "run_timeout_seconds": 1}, actor="user:test")
    manager = Manager(jitter_fraction=0.05)
    for name in (Sleeper.name, "test-raiser"):
        manager.register(controller_get(name))
    manager.start()
    time.sleep(2.6)
    started = time.monotonic()
    assert manager.stop(timeout=10)
    assert time.monotonic() - started < 2
    assert not manager.running()
    runs = ReconcileRun.objects.filter(controller=Sleeper.name)
    assert runs.filter(outcome="success").count() >= 2  # first at start, then every ~1 s
    assert not runs.filter(reason="too_soon").exists()
    assert (
        ReconcileRun.objects.filter(controller="test-raiser", outcome="error").count() == 1
    )  # 60 s interval


@pytest.mark.django_db(transaction=True)
def test_runcontrollers_stops_on_sigterm() -> None:
    proc = entry("manage", "runcontrollers", "--only", Sleeper.name, env=subprocess_env())
    try:
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline and not ReconcileRun.objects.filter(controller=Sleeper.name).exists()
        ):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        assert ReconcileRun.objects.get(controller=Sleeper.name).outcome == "success"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err[-2000:]
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
