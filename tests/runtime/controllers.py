"""Small controllers that prove the runtime (the real five have their own tests).

Importable by subprocesses too (tests/runtime/proc_entry.py), so a Celery worker or a
second `reconcile` process sees the same controllers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import Field

from controlplane.audit.models import AuditLog
from reconcilers.controllers.audit_retention import AuditRetentionController
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

WRITE_ACTION = "test.reconciled"


class SleeperParams(ControllerParams):
    hold_seconds: float = Field(default=0.0, ge=0, le=60)
    threshold: int = Field(default=5, ge=0, le=100)


class Sleeper(Controller):
    """Holds the run for `hold_seconds` (checkpointing), then appends one audit row per run,
    so the committed runs can be counted in the database."""

    name = "test-sleeper"
    default_interval_seconds = 60
    step_names = ("written",)
    Params = SleeperParams

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        deadline = time.monotonic() + ctx.params.hold_seconds
        while time.monotonic() < deadline:
            ctx.checkpoint()
            time.sleep(0.05)
        with ctx.transaction():
            AuditLog.objects.create(
                created_at=ctx.now,
                actor=f"system:{self.name}",
                action=WRITE_ACTION,
                resource_type="test",
                resource_id=self.name,
            )
        ctx.log_step("written", 1)
        return self.result(written=1)

    def config_warnings(self, params: ControllerParams) -> list[str]:
        assert isinstance(params, SleeperParams)
        return ["threshold above 50 is unusual"] if params.threshold > 50 else []


class Other(Sleeper):
    name = "test-other"


class Raiser(Controller):
    name = "test-raiser"
    default_interval_seconds = 60
    step_names = ("never",)

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        raise RuntimeError("boom from the test controller")


class Gated(Controller):
    """In a thread named paused*, waits for `gate` before writing: a holder paused past its TTL."""

    name = "test-gated"
    default_interval_seconds = 60
    step_names = ("written",)
    gate = threading.Event()
    entered = threading.Event()
    value = "gated"

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        if threading.current_thread().name.startswith("paused"):
            type(self).entered.set()
            if not type(self).gate.wait(timeout=30):
                raise RuntimeError("gate never opened")
        with ctx.transaction():
            AuditLog.objects.create(
                created_at=ctx.now,
                actor=f"system:{self.name}",
                action=WRITE_ACTION,
                resource_type="test",
                resource_id=type(self).value,
            )
        return self.result(written=1)


class SlowPurge(AuditRetentionController):
    """audit-retention with a pause in every batch, so a watcher sees a purge in progress.
    Installed only where a test asks for it (its runs delete every old audit row)."""

    name = "test-slow-purge"
    BATCH_PAUSE_SECONDS = 0.3

    @staticmethod
    def _purge(*args: Any, **kwargs: Any) -> tuple[int, str | None]:
        time.sleep(SlowPurge.BATCH_PAUSE_SECONDS)
        return AuditRetentionController._purge(*args, **kwargs)


TEST_CONTROLLERS: tuple[type[Controller], ...] = (Sleeper, Other, Raiser, Gated)


def writes(name: str | None = None) -> int:
    rows = AuditLog.objects.filter(action=WRITE_ACTION)
    if name is not None:
        rows = rows.filter(actor=f"system:{name}")
    return rows.count()
