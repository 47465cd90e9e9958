"""Alert and recording rules, Alertmanager's config and the Grafana dashboard: valid, tested by
promtool and amtool, and built only from metrics the project exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
RULES_TEST = ROOT / "deploy/prometheus/alerts_test.yml"
RECORDING = ROOT / "deploy/prometheus/recording.yml"
RECORDING_TEST = ROOT / "deploy/prometheus/recording_test.yml"
ALERTMANAGER = ROOT / "deploy/alertmanager"
DASHBOARD = ROOT / "deploy/grafana/controlplane-dashboard.json"
METRIC_NAME = re.compile(r"\bcontrolplane_[a-z_]+")
# The tools are installed by .ci/install-system-packages: in CI a missing one fails the test.
IN_CI = bool(os.environ.get("CI"))
# design.md §4.12: what the alerts must cover.
REQUIRED_ALERTS = {
    "ControllerNoRecentSuccess",
    "ControllerErrorRatioHigh",
    "ControllerLockLost",
    "ControllerBrakeEngaged",
    "ControllerDryRunLeftOn",
    "ControllerConfigInvalid",
    "ControllerRunAbandoned",
}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _rule_metric_names() -> set[str]:
    return {name for rule in _rules() for name in METRIC_NAME.findall(rule["expr"])}


def _dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    # The dashboard's metric namespace is a variable; its default is the project's.
    exprs = [
        t["expr"].replace("${namespace}", "controlplane")
        for panel in dashboard["panels"]
        for t in panel["targets"]
    ]
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def test_rules_parse_and_cover_the_spec() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == REQUIRED_ALERTS
    for rule in rules:
        assert rule["expr"].strip()
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
    dry_run = next(r for r in rules if r["alert"] == "ControllerDryRunLeftOn")
    assert dry_run["for"] == "1d"
    stale = next(r for r in rules if r["alert"] == "ControllerNoRecentSuccess")
    assert "controlplane_controller_interval_seconds" in stale["expr"]
    assert "3 *" in stale["expr"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed: .ci/install-system-packages installs it")
        pytest.skip(f"{name} not installed (.ci/install-system-packages installs it)")
    return path


def test_promtool_checks_config_and_rules() -> None:
    promtool = _tool("promtool")
    config = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    # Each alert fires on sample series that should page, and stays quiet on the others.
    # Each recording rule's series equals its source summed per job and controller.
    for tests in (RULES_TEST, RECORDING_TEST):
        unit = subprocess.run(
            [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120
        )
        assert unit.returncode == 0, unit.stdout + unit.stderr


def _recorded() -> dict[str, str]:
    groups = yaml.safe_load(RECORDING.read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_recording_rules_give_controller_runtime_names() -> None:
    recorded = _recorded()
    histogram = "controller_runtime_reconcile_time_seconds"
    assert {
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_errors_total",
        f"{histogram}_bucket",
        f"{histogram}_sum",
        f"{histogram}_count",
        "controller_runtime_active_workers",
    } == set(recorded)
    for expr in recorded.values():
        # Kept per job, so a controller-runtime dashboard needs only its job selector changed.
        assert "sum by (job, controller" in expr
    tests = yaml.safe_load(RECORDING_TEST.read_text())["tests"]
    checked = {test["expr"].strip() for case in tests for test in case["promql_expr_test"]}
    assert set(recorded) <= checked, "every recorded series has a promtool test"


def _alertmanager_render(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALERTMANAGER_WEBHOOK_URL": url, "ALERTMANAGER_CONFIG": str(tmp_path / "am.yml")}
    return subprocess.run(
        ["sh", str(ALERTMANAGER / "render.sh")], capture_output=True, text=True, env=env, timeout=30
    )


def test_alertmanager_config_renders_and_passes_amtool(tmp_path: Path) -> None:
    amtool = _tool("amtool")
    url = "https://hooks.example.org/alerts?team=ops&key=a|b"
    rendered = _alertmanager_render(tmp_path, url)
    assert rendered.returncode == 0, rendered.stderr
    config = yaml.safe_load((tmp_path / "am.yml").read_text())
    assert config["receivers"][0]["webhook_configs"][0]["url"] == url
    checked = subprocess.run(
        [amtool, "check-config", str(tmp_path / "am.yml")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Prometheus sends its alerts there.
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        t
        for am in prometheus["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]


@pytest.mark.parametrize("url", ["", "ftp://example.org/x", 'https://example.org/"x'])
def test_alertmanager_render_refuses_a_bad_webhook(tmp_path: Path, url: str) -> None:
    rendered = _alertmanager_render(tmp_path, url)
    assert rendered.returncode != 0
    assert "ALERTMANAGER_WEBHOOK_URL" in rendered.stderr
    assert not (tmp_path / "am.yml").exists()


def _scraped_names(client: Client) -> set[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    names = set()
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.django_db
def test_rules_and_dashboard_reference_only_exported_metrics(
    client: Client, controller_names: list[str]
) -> None:
    metrics = pytest.importorskip("reconcilers.runtime.metrics")
    # What a web process does at start-up (AppConfig.ready) and a worker at its first run:
    # every series of every registered controller exists at 0.
    metrics.metrics_precreate(controller_names)
    scraped = _scraped_names(client)
    assert any(name.startswith("controlplane_controller_") for name in scraped)
    referenced = _rule_metric_names() | _dashboard_metric_names()
    referenced |= {name for expr in _recorded().values() for name in METRIC_NAME.findall(expr)}
    assert len(_rule_metric_names()) >= 7
    missing = referenced - scraped
    assert not missing, f"referenced but not exported: {sorted(missing)}"
