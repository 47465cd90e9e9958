"""Fixtures of the runtime tests: test controllers in the registry, subprocess environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from reconcilers.runtime.contract import Controller
from reconcilers.runtime.testing import controllers_installed
from reconcilers.schedule import schedule_sync
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


class RedisServer:
    """A private redis-server on a loopback port, started and stopped by pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(REDIS_OUTAGE_PORT)
    yield server
    server.stop()
