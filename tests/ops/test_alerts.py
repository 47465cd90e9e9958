"""Alert rules and the Grafana dashboard: valid, and built only from metrics the project exports."""

from __future__ import annotations

import json
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
DASHBOARD = ROOT / "deploy/grafana/controlplane-dashboard.json"
METRIC_NAME = re.compile(r"\bcontrolplane_[a-z_]+")
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
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
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


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_config_and_rules() -> None:
    config = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    # Each alert fires on sample series that should page, and stays quiet on the others.
    unit = subprocess.run(
        ["promtool", "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


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
    assert len(_rule_metric_names()) >= 7
    missing = referenced - scraped
    assert not missing, f"referenced but not exported: {sorted(missing)}"
