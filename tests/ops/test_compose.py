"""docker-compose.yml: it validates, and every service starts with the command the README documents."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
REQUIRED_ENV = {"POSTGRES_PASSWORD": "pw", "SECRET_KEY": "k" * 50, "FLOWER_BASIC_AUTH": "ops:secret"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else shlex.join(command)


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "flower", "prometheus"} <= set(
        compose["services"]
    )


def test_every_service_command_is_documented_in_readme(compose: dict[str, Any]) -> None:
    readme = README.read_text()
    commands = {name: _command(s) for name, s in compose["services"].items() if "command" in s}
    assert len(commands) >= 7
    missing = {name: cmd for name, cmd in commands.items() if f"{cmd}`" not in readme}
    assert not missing, f"commands not written in README.md: {missing}"


def test_worker_is_scalable_and_exports_metrics(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # host ports would collide across replicas
    assert "-Q reconcilers,celery" in worker["command"]
    assert worker["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    port = worker["environment"]["WORKER_METRICS_PORT"]
    assert port in worker["expose"]
    # Prometheus discovers every replica through DNS on the service name, on that port.
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    sd = [sd for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert sd == [{"names": ["worker"], "type": "A", "port": int(port), "refresh_interval": "15s"}]
    assert any(
        "web:8000" in target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    )


def test_beat_uses_the_database_scheduler(compose: dict[str, Any]) -> None:
    assert "django_celery_beat.schedulers:DatabaseScheduler" in compose["services"]["beat"]["command"]


def test_flower_password_has_no_default(compose: dict[str, Any]) -> None:
    raw = COMPOSE.read_text()
    assert "FLOWER_BASIC_AUTH: ${FLOWER_BASIC_AUTH:?" in raw
    assert "FLOWER_BASIC_AUTH" in compose["services"]["flower"]["environment"]


def test_prometheus_mounts_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rule_file).is_file()


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # Debian's package (Compose v1)
    return [legacy] if legacy else None


def _config(cli: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
    return subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=60,
    )


def test_docker_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI (.ci/install-system-packages installs docker-compose)")
    result = _config(cli, REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    # Without the Flower credentials compose refuses to start: there is no default password.
    refused = _config(cli, {k: v for k, v in REQUIRED_ENV.items() if k != "FLOWER_BASIC_AUTH"})
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr + refused.stdout
