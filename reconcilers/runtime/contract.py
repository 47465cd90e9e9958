"""The public contract between the runtime and a controller (design.md §4.1): small on purpose.

A controller declares its name, default interval, step names and a typed parameter
schema, and implements `reconcile(ctx) -> ReconcileResult`. Everything else (lock,
fencing, timeouts, dry-run rollback, metrics, run history) is the runtime's job.
Controllers never import celery, redis or prometheus_client.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


class ReconcileError(Exception):
    """Base of the errors the runtime raises into a controller to stop a run."""

    reason = "exception"


class LockLostError(ReconcileError):
    """A newer lock grant exists (fence check failed, or renewal failed): stop, roll back."""

    reason = "lock_lost"


class RunTimeoutError(ReconcileError):
    """The run exceeded run_timeout_seconds; raised at the next batch boundary."""

    reason = "timeout"


class ControllerParams(BaseModel):
    """Base of every controller's typed parameter schema.

    Strict: params arrive as JSON, and lax coercion would read `true` as 1 (a one-day
    retention) or "30" as a number; unknown keys are rejected too. Defaults are validated
    like any value, so a default that breaks a constraint (a stale timeout under two
    heartbeats after the heartbeat setting rose) is an error, not a silent exception.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile did: rows changed per step, plus flags such as brake_engaged.

    A controller returns the counts of its steps the same way in real and dry runs;
    the runtime files a dry run's counts under `would_change` and reports `items` 0.
    """

    steps: Mapping[str, int]
    flags: Mapping[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", MappingProxyType(dict(self.steps)))
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))

    @property
    def items(self) -> int:
        return sum(self.steps.values())


class ReconcileContext(Protocol):
    """What the runtime hands a controller for one run."""

    controller: str
    now: datetime  # database time read once at the start of the run: every cutoff uses it
    dry_run: bool
    ignore_brake: bool
    params: Any  # the controller's ControllerParams subclass instance
    log: logging.Logger

    def transaction(self) -> AbstractContextManager[None]:
        """Open a write transaction. On exit it re-checks this run's fencing token in the
        same transaction and raises LockLostError (rolling back) if a newer grant exists.
        In a dry run the whole reconcile sits in an outer transaction that is rolled back,
        so steps see each other's effects exactly as in a real run."""
        ...

    def tally(self, step: str, count: int) -> None:
        """Inside `transaction()`: count `count` rows changed by `step` in this batch. The run's
        history row is updated with the batch, in its transaction, so it always shows what has
        committed, and a run cut short still records it."""
        ...

    def log_step(self, step: str, count: int, ids: Sequence[int] = ()) -> None:
        """Log one step's outcome: an INFO line with the count and the run's parameters, the
        affected ids at DEBUG (bounded), and a WARNING when a dry run found work."""
        ...

    def checkpoint(self) -> None:
        """Call at every batch boundary: raises LockLostError or RunTimeoutError if the run
        must stop (renewal failed, lock lost, timeout)."""
        ...


class Controller(ABC):
    """A level-based, idempotent reconciler of one resource."""

    name: ClassVar[str]
    default_interval_seconds: ClassVar[int]
    step_names: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[ControllerParams]] = ControllerParams

    @abstractmethod
    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        """Converge the state once. Idempotent: a second run right after changes nothing."""

    def validate_params(self, raw: Mapping[str, Any]) -> ControllerParams:
        """Parse and validate raw params (pydantic ValidationError names the field)."""
        return self.Params.model_validate(dict(raw))

    def default_params(self) -> ControllerParams:
        return self.Params()

    def config_warnings(self, params: ControllerParams) -> list[str]:
        """Advice shown in the admin without blocking the save (e.g. retention below a year)."""
        return []

    def result(self, flags: Mapping[str, bool] | None = None, **steps: int) -> ReconcileResult:
        """Build a result with every declared step present (0 when a step did nothing)."""
        unknown = set(steps) - set(self.step_names)
        if unknown:
            raise ValueError(f"{self.name}: unknown steps {sorted(unknown)}")
        return ReconcileResult(
            steps={step: int(steps.get(step, 0)) for step in self.step_names}, flags=dict(flags or {})
        )


def batched_ids(ids: list[int], size: int) -> Iterator[list[int]]:
    """Split a list of ids into consecutive chunks of at most `size`."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
