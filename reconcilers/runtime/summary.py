"""What one run did, as the runner returns it: built by three named constructors, rendered once.

The CLI (`reconcile --json` and its text line), the admin's messages, the dashboard and a
Celery task's return value all show the same RunSummary (design.md §4.10, §8).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from reconcilers.models import RunOutcome
from reconcilers.runtime.contract import ReconcileResult


@dataclass(frozen=True)
class RunSummary:
    """What one run did. `as_json()` has exactly the CLI's keys (design.md §8)."""

    controller: str
    outcome: str
    reason: str | None
    items: int
    steps: Mapping[str, int]
    dry_run: bool
    would_change: Mapping[str, int]
    flags: Mapping[str, bool]
    fence: int | None
    duration_s: float
    run_id: int | None = None
    error_text: str = field(default="", repr=False, compare=False)  # with the traceback

    def __post_init__(self) -> None:
        for name in ("steps", "would_change", "flags"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @classmethod
    def success(
        cls,
        controller: str,
        result: ReconcileResult,
        *,
        dry_run: bool,
        fence: int,
        duration_s: float,
        run_id: int | None = None,
    ) -> RunSummary:
        """A finished run. A dry run files its counts under `would_change` and reports
        `items` 0 with every step at 0 (design.md §4.6)."""
        counts = dict(result.steps)
        return cls(
            controller=controller,
            outcome=RunOutcome.SUCCESS,
            reason=None,
            items=0 if dry_run else int(result.items),
            steps=dict.fromkeys(counts, 0) if dry_run else counts,
            dry_run=dry_run,
            would_change=counts if dry_run else {},
            flags={key: bool(value) for key, value in result.flags.items()},
            fence=fence,
            duration_s=round(duration_s, 6),
            run_id=run_id,
        )

    @classmethod
    def error(
        cls,
        controller: str,
        reason: str,
        *,
        dry_run: bool,
        fence: int | None,
        duration_s: float,
        error_text: str,
        steps: Mapping[str, int] | None = None,
        run_id: int | None = None,
    ) -> RunSummary:
        """A run that ended in an error, with what its batches committed before it stopped."""
        committed = dict(steps or {})
        return cls(
            controller=controller,
            outcome=RunOutcome.ERROR,
            reason=reason,
            items=sum(committed.values()),
            steps=committed,
            dry_run=dry_run,
            would_change={},
            flags={},
            fence=fence,
            duration_s=round(duration_s, 6),
            run_id=run_id,
            error_text=error_text,
        )

    @classmethod
    def skipped(
        cls,
        controller: str,
        reason: str,
        *,
        dry_run: bool,
        fence: int | None,
        duration_s: float,
        run_id: int | None = None,
    ) -> RunSummary:
        """A run that did not start its reconcile (paused, disabled, locked, too soon...)."""
        return cls(
            controller=controller,
            outcome=RunOutcome.SKIPPED,
            reason=reason,
            items=0,
            steps={},
            dry_run=dry_run,
            would_change={},
            flags={},
            fence=fence,
            duration_s=round(duration_s, 6),
            run_id=run_id,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "controller": self.controller,
            "outcome": self.outcome,
            "reason": self.reason,
            "items": self.items,
            "steps": dict(self.steps),
            "dry_run": self.dry_run,
            "would_change": dict(self.would_change),
            "flags": dict(self.flags),
            "fence": self.fence,
            "duration_s": self.duration_s,
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON keys plus run_id (what a Celery task returns, so Flower shows it)."""
        return {**self.as_json(), "run_id": self.run_id}

    def describe(self) -> str:
        """One line for people: the CLI's text output, the admin's and the dashboard's messages.

        `agent-health: dry run success, would change {"stale_offline": 2, ...} fence=7 0.012s`
        """
        kind = "dry run" if self.dry_run else "run"
        text = f"{self.controller}: {kind} {self.outcome}"
        if self.reason:
            text += f" ({self.reason})"
        if self.outcome == RunOutcome.SUCCESS:
            if self.dry_run:
                text += f", would change {json.dumps(dict(self.would_change))}"
            else:
                text += f", items {self.items} {json.dumps(dict(self.steps))}"
            if self.flags:
                text += f", flags {json.dumps(dict(self.flags))}"
        if self.fence is not None:
            text += f" fence={self.fence}"
        return f"{text} {self.duration_s:.3f}s"
