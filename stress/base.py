"""What every scenario shares: its environment (folder, private ports, subprocess settings),
its report (figures and violations), data reset and controller configuration."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection

from controlplane.agents.models import Agent, AgentLease
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command
from controlplane.tenants.models import Tenant
from controlplane.tokens.models import BootstrapToken
from reconcilers import registry
from reconcilers.models import ReconcileRun
from reconcilers.services import config_update
from stress import db
from stress.procs import REPO_ROOT

ACTOR = "user:stress"
HEARTBEAT_INTERVAL_SECONDS = (
    1  # AGENT_HEARTBEAT_INTERVAL_SECONDS everywhere: allows second-scale stale timeouts
)
PORTS = range(16440, 16470)  # this suite's private loopback ports


@dataclass
class Report:
    """One scenario's outcome: printed figures, and violations (any makes `make stress` fail)."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.violations.append(message)

    def render(self) -> str:
        lines = [f"== {self.name}: {'OK' if self.ok else 'FAILED'}"]
        for key, value in self.figures.items():
            lines.append(f"   {key}: {value}")
        lines += [f"   VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


@dataclass
class StressEnv:
    """Where a scenario runs: its log folder, its private Redis port, the settings its
    subprocesses get. `lock_prefix` is unique per run so keys never collide."""

    log_dir: Path
    redis_port: int = 16440
    # The failover scenario's Sentinel cluster: master, replica, three sentinels.
    sentinel_ports: range = range(17100, 17105)
    lock_prefix: str = field(default_factory=lambda: f"cpstress:{uuid.uuid4().hex[:8]}:lock:")

    def subprocess_env(self, *, app: str = db.WORKER_APP_PREFIX, **extra: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PROMETHEUS_MULTIPROC_DIR", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER")
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "controlplane.settings",
                "DEBUG": "1",
                "DATABASE_URL": db.database_url(app),
                "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/1",
                "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "RECONCILERS_LOCK_PREFIX": self.lock_prefix,
                "RECONCILERS_LOCK_BACKEND": "redis",
                "RECONCILERS_PAUSED": "0",
                "WORKER_METRICS_PORT": "0",
                "AGENT_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_INTERVAL_SECONDS),
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env


def data_reset() -> None:
    """Empty the domain tables and the run history (the config rows and fences stay)."""
    tables = [
        m._meta.db_table for m in (Command, AgentLease, Agent, BootstrapToken, AuditLog, Tenant, ReconcileRun)
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def configure(settings_by_controller: Mapping[str, Mapping[str, Any]], *, enable_only: bool = True) -> None:
    """Apply config through config_update (validated, audited, beat synced). With
    `enable_only`, controllers not named are disabled so they add no load."""
    for name in registry.controller_names():
        changes = dict(settings_by_controller.get(name, {}))
        if name in settings_by_controller:
            changes.setdefault("enabled", True)
            changes.setdefault("dry_run", False)
        elif enable_only:
            changes = {"enabled": False}
        if changes:
            config_update(name, changes, actor=ACTOR)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


TRACEBACK_HEADER = "Traceback (most recent call last)"
TRACEBACK_EXCERPT_LINES = 40


def traceback_count(text: str) -> int:
    return text.count(TRACEBACK_HEADER)


def first_traceback(text: str) -> str:
    """The log from the line before the first traceback (the message that logged it), so a
    failed scenario says what was raised, not only how often; "" when there is none."""
    at = text.find(TRACEBACK_HEADER)
    if at < 0:
        return ""
    lines = text[:at].splitlines()[-1:] + text[at:].splitlines()
    return "\n".join(lines[:TRACEBACK_EXCERPT_LINES])
