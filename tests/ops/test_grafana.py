"""Grafana provisioning: the datasource and dashboard files compose mounts, and a dashboard whose
every query names a metric the project exports or records, with thresholds on every stat."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.test import Client

from reconcilers.registry import controller_names
from reconcilers.runtime.metrics import metrics_precreate

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy/grafana"
DASHBOARD = GRAFANA / "controlplane-dashboard.json"
RECORDING = ROOT / "deploy/prometheus/recording.yml"
# A metric name in PromQL: an identifier followed by a selector, a range or a closing paren,
# that is not a function, keyword or label.
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "and", "or", "unless",
    "rate", "increase", "irate", "histogram_quantile", "max_over_time", "time", "le", "controller",
    "result", "reason", "job", "bool", "offset",
}  # fmt: skip


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _variable(name: str) -> dict[str, Any]:
    return next(v for v in _dashboard()["templating"]["list"] if v["name"] == name)


def _expr_metric_names(expr: str, namespace: str) -> set[str]:
    text = expr.replace("${namespace}", namespace)
    text = re.sub(r'"[^"]*"', "", text)  # label values
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\{[^}]*\}", "", text)  # selectors (label names)
    return {word for word in IDENTIFIER.findall(text) if word not in PROMQL_WORDS and not word[0].isdigit()}


def test_compose_provisions_grafana_with_the_datasource_and_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in grafana["volumes"] if ":" in volume}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = mounts["./deploy/grafana/controlplane-dashboard.json"]
    assert "${GRAFANA_ADMIN_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()

    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert len(sources) == 1
    source = sources[0]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]

    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/controlplane.yml").read_text())[
        "providers"
    ]
    assert [p["type"] for p in providers] == ["file"]
    assert Path(dashboard_in_container).parent == Path(providers[0]["options"]["path"])


def test_namespace_is_a_dashboard_variable() -> None:
    namespace = _variable("namespace")
    assert namespace["query"] == settings.METRICS_NAMESPACE == "controlplane"
    assert namespace["current"]["value"] == "controlplane"
    assert "${namespace}" in _variable("controller")["definition"]
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            # Written against the variable, never a hard-coded namespace.
            assert "controlplane_" not in target["expr"], (panel["title"], target["expr"])


def test_stat_panels_have_thresholds() -> None:
    stats = [panel for panel in _dashboard()["panels"] if panel["type"] == "stat"]
    assert len(stats) >= 5
    for panel in stats:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps, panel["title"]
        assert steps[0]["value"] is None, f"{panel['title']}: the base step has no value"
    brake = next(panel for panel in stats if panel["title"] == "Brake engaged")
    steps = brake["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "green", "value": None}, {"color": "red", "value": 1}]
    assert brake["options"]["colorMode"] == "background"
    # Every stat about something that pages turns a colour other than its base.
    for title in ("Lock lost (1 h)", "Config invalid", "Runs abandoned (24 h)"):
        panel = next(p for p in stats if p["title"] == title)
        assert len(panel["fieldConfig"]["defaults"]["thresholds"]["steps"]) >= 2, title


def test_interval_panel_survives_a_worker_restart() -> None:
    """The raw last-success gauge is 0 in a new process: time() - 0 plotted ~20,000 intervals."""
    panels = [
        panel
        for panel in _dashboard()["panels"]
        for target in panel["targets"]
        if "last_reconcile_timestamp_seconds" in target["expr"]
    ]
    assert panels
    for panel in panels:
        assert "interval" in panel["title"].lower()
        for target in panel["targets"]:
            assert "max_over_time(${namespace}_controller_last_reconcile_timestamp_seconds" in target["expr"]
            assert "> 0" in target["expr"]


def _scraped(client: Client) -> set[str]:
    body = client.get("/metrics").content.decode()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in body.splitlines() if line and line[0] != "#"}


@pytest.mark.django_db
def test_every_panel_query_names_an_exported_or_recorded_metric(client: Client) -> None:
    metrics_precreate(controller_names())
    exported = _scraped(client)
    recorded = {
        rule["record"] for group in yaml.safe_load(RECORDING.read_text())["groups"] for rule in group["rules"]
    }
    namespace = _variable("namespace")["query"]
    for panel in _dashboard()["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _expr_metric_names(target["expr"], namespace)
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            unknown = names - exported - recorded
            assert not unknown, f"{panel['title']}: {sorted(unknown)} neither exported nor recorded"
