"""Settings read from the environment: malformed values fail at start, naming the variable."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DEBUG", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "nosuchdb://what"),
        ("DATABASE_URL", "postgres://user@host:notaport/db"),
        ("DEBUG", "maybe"),
        ("REDIS_URL", "http://not-redis"),
        ("AGENT_HEARTBEAT_INTERVAL_SECONDS", "abc"),
        ("RECONCILERS_MIN_GAP_FRACTION", "0.4"),
    ],
)
def test_malformed_variable_exits_naming_it(variable: str, value: str) -> None:
    env = {"DEBUG": "1", variable: value}
    result = _manage("check", **env)
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_key_required_without_debug() -> None:
    result = _manage("check", DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY="x" * 24 + "production-secret-key-with-enough-entropy-1234567890",
        ALLOWED_HOSTS="controlplane.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


REDIS_VARIABLES = (
    "REDIS_URL",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_SENTINEL_TLS",
    "REDIS_TLS_CA_FILE",
    "CELERY_BROKER_URL",
    "CELERY_BROKER_TRANSPORT_OPTIONS",
)


def _manage_redis(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """manage.py with only the given Redis/broker variables (none leaks from the outer run)."""
    unset = {k: v for k, v in os.environ.items() if k not in REDIS_VARIABLES}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={
            **{k: v for k, v in unset.items() if k not in ("DATABASE_URL", "SECRET_KEY")},
            "DEBUG": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"REDIS_URL": "sentinel://h1:26379;sentinel://h2:notaport", "REDIS_SENTINEL_MASTER": "m"},
            "REDIS_URL",
        ),
        ({"REDIS_URL": "sentinel://h1:26379;sentinel://h2:26379"}, "REDIS_SENTINEL_MASTER"),
    ],
)
def test_malformed_sentinel_address_or_missing_master_stops_startup(env: dict[str, str], named: str) -> None:
    result = _manage_redis("check", **env)
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"REDIS_URL": "sentinel://h1:26379;sentinel://h2:notaport", "REDIS_SENTINEL_MASTER": "m"},
            "REDIS_URL",
        ),
        ({"REDIS_URL": "sentinel://h1:26379;redis://h2:6379", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URL"),
        ({"REDIS_URL": "sentinel://h1:26379;;", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URL"),
        ({"REDIS_URL": "sentinel://h1:26379;sentinel://h2:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_URL": "sentinel://h1:26379", "REDIS_SENTINEL_MASTER": "two words"}, "REDIS_SENTINEL_MASTER"),
        ({"CELERY_BROKER_URL": "sentinel://h1:26379;sentinel://h2:26379"}, "REDIS_SENTINEL_MASTER"),
        (
            {"CELERY_BROKER_URL": "sentinel://h1:26379;sentinel://:26379", "REDIS_SENTINEL_MASTER": "m"},
            "CELERY_BROKER_URL",
        ),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_TLS": "1"}, "REDIS_SENTINEL_TLS"),
        ({"REDIS_TLS_CA_FILE": "/no/such/ca.pem"}, "REDIS_TLS_CA_FILE"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": "[1, 2]"}, "CELERY_BROKER_TRANSPORT_OPTIONS"),
        ({"CELERY_BROKER_TRANSPORT_OPTIONS": "{not json"}, "CELERY_BROKER_TRANSPORT_OPTIONS"),
    ],
)
def test_bad_redis_or_broker_setting_is_refused_naming_the_variable(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings module re-read in this process (runpy: a fresh namespace, Django's
    loaded settings untouched), for the cases the subprocess test above does not start."""
    for variable in REDIS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DEBUG", "1")
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ImproperlyConfigured) as refused:
        runpy.run_path(str(ROOT / "controlplane" / "settings.py"))
    assert str(refused.value).startswith(named)


def test_sentinel_settings_reach_kombu_and_the_factory() -> None:
    """The kombu form and the master name become the broker's transport options; options
    from CELERY_BROKER_TRANSPORT_OPTIONS are added (and win)."""
    script = (
        "import json\n"
        "from controlplane.celery import app\n"
        "from controlplane.common.redis import RedisConfig\n"
        "options = app.conf.broker_transport_options\n"
        "print(json.dumps({'master': options['master_name'], 'visibility': options['visibility_timeout'],"
        " 'sentinel_password': options['sentinel_kwargs']['password'], 'broker': app.conf.broker_url,"
        " 'config': RedisConfig.from_settings().sentinel_master}))\n"
    )
    urls = "sentinel://127.0.0.1:26379/1;sentinel://127.0.0.2:26379/1"
    result = _manage_redis(
        "shell",
        "-c",
        script,
        REDIS_URL=urls,
        REDIS_SENTINEL_MASTER="mymaster",
        REDIS_SENTINEL_PASSWORD="pw",
        CELERY_BROKER_TRANSPORT_OPTIONS='{"visibility_timeout": 7200}',
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "master": "mymaster",
        "visibility": 7200,
        "sentinel_password": "pw",
        "broker": urls,
        "config": "mymaster",
    }


LIVENESS_VARIABLES = (
    "DATABASE_KEEPALIVES_IDLE_SECONDS",
    "DATABASE_KEEPALIVES_INTERVAL_SECONDS",
    "DATABASE_KEEPALIVES_COUNT",
    "DATABASE_TCP_USER_TIMEOUT_SECONDS",
)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_KEEPALIVES_IDLE_SECONDS", "0"),
        ("DATABASE_KEEPALIVES_INTERVAL_SECONDS", "5s"),
        ("DATABASE_KEEPALIVES_COUNT", "101"),
        ("DATABASE_TCP_USER_TIMEOUT_SECONDS", "-1"),
    ],
)
@pytest.mark.parametrize("database_url", ["postgres://u@db/x", "sqlite:////tmp/cp-liveness.sqlite3"])
def test_a_bad_connection_liveness_value_is_refused_naming_it_whatever_the_database(
    variable: str, value: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LIVENESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ImproperlyConfigured) as refused:
        runpy.run_path(str(ROOT / "controlplane" / "settings.py"))
    assert str(refused.value).startswith(f"{variable} is malformed")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AUDIT_ARCHIVE_ROOT", "relative/archive"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("ADMIN_LOGIN_FAILURE_LIMIT", "0"),
        ("ADMIN_LOGIN_LOCKOUT_MINUTES", "soon"),
        ("API_REGISTER_BURST", "0"),
        ("API_REGISTER_WINDOW_SECONDS", "-5"),
        ("API_UNAUTHORIZED_BURST", "many"),
        ("API_UNAUTHORIZED_WINDOW_SECONDS", "0"),
        ("API_JSON_MAX_DEPTH", "1"),
        ("WORKER_METRICS_HOST", "all-interfaces"),
    ],
)
def test_bad_security_setting_is_refused_naming_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ImproperlyConfigured) as refused:
        runpy.run_path(str(ROOT / "controlplane" / "settings.py"))
    assert str(refused.value).startswith(f"{variable} is malformed")


def test_postgresql_connections_get_keepalives_and_a_tcp_user_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defaults detect a dead peer in about 25 s; variables set them; the URL's own wins."""
    for name in LIVENESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/x")
    options = runpy.run_path(str(ROOT / "controlplane" / "settings.py"))["DATABASES"]["default"]["OPTIONS"]
    assert options == {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 20000,
    }
    monkeypatch.setenv("DATABASE_KEEPALIVES_IDLE_SECONDS", "4")
    monkeypatch.setenv("DATABASE_TCP_USER_TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/x?keepalives_count=7")
    options = runpy.run_path(str(ROOT / "controlplane" / "settings.py"))["DATABASES"]["default"]["OPTIONS"]
    assert (options["keepalives_idle"], options["tcp_user_timeout"]) == (4, 0)
    assert int(options["keepalives_count"]) == 7
    monkeypatch.setenv("DATABASE_URL", "sqlite:////tmp/cp-liveness.sqlite3")
    options = runpy.run_path(str(ROOT / "controlplane" / "settings.py"))["DATABASES"]["default"]["OPTIONS"]
    assert "keepalives" not in options


def test_security_defaults_trust_no_proxy_and_bind_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "1")
    for variable in ("TRUSTED_PROXY_COUNT", "WORKER_METRICS_HOST", "API_JSON_MAX_DEPTH"):
        monkeypatch.delenv(variable, raising=False)
    values = runpy.run_path(str(ROOT / "controlplane" / "settings.py"))
    assert values["TRUSTED_PROXY_COUNT"] == 0
    assert values["SECURE_PROXY_SSL_HEADER"] is None  # X-Forwarded-Proto is not believed
    assert values["WORKER_METRICS_HOST"] == "127.0.0.1"
    assert values["API_JSON_MAX_DEPTH"] == 64
    assert values["AXES_LOCKOUT_PARAMETERS"] == [["username", "ip_address"]]
