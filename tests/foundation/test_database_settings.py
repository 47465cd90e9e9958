"""Database connection settings from the environment: persistence, health checks, PgBouncer.

The settings module is re-read in this process (runpy: a fresh namespace, Django's loaded
settings untouched), with only the variables of each case set.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = (
    "DATABASE_URL",
    "DATABASE_POOL",
    "CONN_MAX_AGE",
    "CONN_HEALTH_CHECKS",
    "DISABLE_SERVER_SIDE_CURSORS",
)
POSTGRES = "postgres://app@db.example.com:6432/controlplane"


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DEBUG", "1")
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return runpy.run_path(str(ROOT / "controlplane" / "settings.py"))


def test_postgres_defaults_keep_connections_with_health_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    db = _settings(monkeypatch, DATABASE_URL=POSTGRES)["DATABASES"]["default"]
    assert db["CONN_MAX_AGE"] == 60
    assert db["CONN_HEALTH_CHECKS"] is True
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is False
    assert "prepare_threshold" not in db["OPTIONS"]  # Django's default: None, no prepared statements


def test_each_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    db = _settings(
        monkeypatch,
        DATABASE_URL=POSTGRES,
        CONN_MAX_AGE="0",
        CONN_HEALTH_CHECKS="0",
        DISABLE_SERVER_SIDE_CURSORS="1",
    )["DATABASES"]["default"]
    assert (db["CONN_MAX_AGE"], db["CONN_HEALTH_CHECKS"], db["DISABLE_SERVER_SIDE_CURSORS"]) == (
        0,
        False,
        True,
    )


def test_pgbouncer_turns_server_side_cursors_off(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _settings(monkeypatch, DATABASE_URL=POSTGRES, DATABASE_POOL="pgbouncer", CONN_MAX_AGE="300")
    db = loaded["DATABASES"]["default"]
    assert loaded["DATABASE_POOL"] == "pgbouncer"
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert db["CONN_MAX_AGE"] == 300


def test_sqlite_keeps_no_connection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = _settings(monkeypatch, DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite3", CONN_MAX_AGE="600")[
        "DATABASES"
    ]["default"]
    assert db["CONN_MAX_AGE"] == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CONN_MAX_AGE": "forever"}, "CONN_MAX_AGE"),
        ({"CONN_MAX_AGE": "-1"}, "CONN_MAX_AGE"),
        ({"CONN_HEALTH_CHECKS": "sometimes"}, "CONN_HEALTH_CHECKS"),
        ({"DISABLE_SERVER_SIDE_CURSORS": "2"}, "DISABLE_SERVER_SIDE_CURSORS"),
        ({"DATABASE_POOL": "pgpool"}, "DATABASE_POOL"),
        ({"DATABASE_POOL": "pgbouncer", "DISABLE_SERVER_SIDE_CURSORS": "0"}, "DISABLE_SERVER_SIDE_CURSORS"),
        ({"DATABASE_POOL": "pgbouncer", "DATABASE_URL": "sqlite:////tmp/cp.sqlite3"}, "DATABASE_POOL"),
        # A range check (`validate`) refuses too: marshmallow 4 alone ignored a False.
        ({"RECONCILERS_LOCK_BACKEND": "zookeeper"}, "RECONCILERS_LOCK_BACKEND"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        _settings(monkeypatch, **{"DATABASE_URL": POSTGRES, **env})
    assert str(refused.value).startswith(named)
