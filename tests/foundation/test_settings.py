"""Settings read from the environment: malformed values fail at start, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
