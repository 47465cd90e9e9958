"""Fixtures of the runtime tests: test controllers in the registry, subprocess environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from reconcilers.runtime.contract import Controller
from reconcilers.schedule import schedule_sync
from reconcilers.testing import controllers_installed
from stress.procs import RedisServer
from tests.runtime.controllers import TEST_CONTROLLERS, Gated

REPO_ROOT = Path(__file__).resolve().parents[2]
# Private loopback ports of this suite (outage tests, worker metrics).
REDIS_OUTAGE_PORT = 16380
NOTHING_LISTENS_PORT = 16381
WORKER_METRICS_PORT = 16382


@pytest.fixture
def test_controllers(db: Any, redis_client: redis.Redis) -> Iterator[dict[str, Controller]]:
    """The test controllers registered (beside any real ones), with config and beat rows."""
    Gated.gate.clear()
    Gated.entered.clear()
    with controllers_installed(*TEST_CONTROLLERS) as installed:
        schedule_sync([cls.name for cls in TEST_CONTROLLERS])
        yield installed
    Gated.gate.set()


def database_url() -> str:
    """The URL of the test database, for subprocesses that must see the same rows."""
    cfg = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{cfg['NAME']}"
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg.get("PASSWORD") else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DEBUG": "1",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "RECONCILERS_LOCK_PREFIX": settings.RECONCILERS_LOCK_PREFIX,
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def entry(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """Start `python -m tests.runtime.proc_entry <args>` (test controllers installed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.proc_entry", *args],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(REDIS_OUTAGE_PORT, tmp_path)
    yield server
    server.stop()
