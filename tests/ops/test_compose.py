"""docker-compose.yml and its Sentinel and RabbitMQ overrides: they validate, every service starts
with the command the README documents, and the overrides hand the app settings it accepts."""

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
SENTINEL = ROOT / "docker-compose.sentinel.yml"
RABBITMQ = ROOT / "docker-compose.rabbitmq.yml"
README = ROOT / "README.md"
REQUIRED_ENV = {
    "POSTGRES_PASSWORD": "pw",
    "SECRET_KEY": "k" * 50,
    "FLOWER_BASIC_AUTH": "ops:secret",
    "RABBITMQ_PASSWORD": "rabbit-pw",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
    "ALERTMANAGER_WEBHOOK_URL": "https://hooks.example.org/alerts",
}
APP_SERVICES = ("migrate", "web", "worker", "beat", "flower")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else shlex.join(command)


def test_services_present(compose: dict[str, Any]) -> None:
    assert {
        "postgres",
        "redis",
        "migrate",
        "web",
        "worker",
        "beat",
        "flower",
        "prometheus",
        "alertmanager",
        "grafana",
    } <= set(compose["services"])


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


def _config(
    cli: list[str], env: dict[str, str], *overrides: Path, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
    files = [arg for path in (COMPOSE, *overrides) for arg in ("-f", str(path))]
    return subprocess.run(
        [*cli, *files, "config", *(["-q"] if quiet else [])],
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


def _merged(override: Path) -> dict[str, Any]:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI (.ci/install-system-packages installs docker-compose)")
    result = _config(cli, REQUIRED_ENV, override, quiet=False)
    assert result.returncode == 0, result.stderr
    merged: dict[str, Any] = yaml.safe_load(result.stdout)
    return merged


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # Compose v1 may print KEY=VALUE lines
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_override_commands_are_documented_in_readme() -> None:
    readme = README.read_text()
    for path in (SENTINEL, RABBITMQ):
        assert f"-f {path.name}" in readme
        services = yaml.safe_load(path.read_text())["services"]
        commands = {name: _command(s) for name, s in services.items() if "command" in s}
        missing = {name: cmd for name, cmd in commands.items() if f"{cmd}`" not in readme}
        assert not missing, f"{path.name}: commands not written in README.md: {missing}"


def test_sentinel_override_points_every_app_process_at_the_sentinels() -> None:
    from controlplane.common.redis import redis_url_problem, sentinel_url_parse

    merged = _merged(SENTINEL)["services"]
    assert {"redis", "redis-replica", "sentinel1", "sentinel2", "sentinel3"} <= set(merged)
    for name in APP_SERVICES:
        env = _environment(merged[name])
        assert redis_url_problem(env["REDIS_URL"]) is None, name  # the app's own parser accepts it
        hosts = {host for host, _port in sentinel_url_parse(env["REDIS_URL"]).addresses}
        assert hosts == {"sentinel1", "sentinel2", "sentinel3"}, name
        assert env["REDIS_SENTINEL_MASTER"] == "controlplane", name
        assert env.get("CELERY_BROKER_URL", env["REDIS_URL"]) == env["REDIS_URL"], name
        assert {"sentinel1", "sentinel2", "sentinel3"} <= set(merged[name]["depends_on"]), name
    config = (ROOT / "deploy/redis/sentinel.conf").read_text()
    assert "sentinel monitor controlplane redis 6379 2" in config
    assert "--replicaof redis 6379" in _command(merged["redis-replica"])


def test_rabbitmq_override_is_the_broker_with_the_management_api_for_flower() -> None:
    merged = _merged(RABBITMQ)["services"]
    assert "management" in merged["rabbitmq"]["image"]
    for name in APP_SERVICES:
        env = _environment(merged[name])
        assert env["CELERY_BROKER_URL"] == "amqp://controlplane:rabbit-pw@rabbitmq:5672/controlplane", name
        assert env["REDIS_URL"].startswith("redis://"), name  # locks and cache stay on Redis
    assert _environment(merged["flower"])["FLOWER_BROKER_API"].startswith(
        "http://controlplane:rabbit-pw@rabbitmq:15672/"
    )


def test_overrides_validate_and_the_rabbitmq_password_has_no_default() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI (.ci/install-system-packages installs docker-compose)")
    for override in (SENTINEL, RABBITMQ):
        result = _config(cli, REQUIRED_ENV, override)
        assert result.returncode == 0, f"{override.name}: {result.stderr}"
    refused = _config(cli, {k: v for k, v in REQUIRED_ENV.items() if k != "RABBITMQ_PASSWORD"}, RABBITMQ)
    assert refused.returncode != 0
    assert "RABBITMQ_PASSWORD" in refused.stderr + refused.stdout
