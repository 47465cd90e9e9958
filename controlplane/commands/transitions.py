"""Column values of the command lifecycle transitions, shared by controllers, services and admin.

Each function returns keyword arguments for a set-based `QuerySet.update(...)`; the caller
puts the state condition in the WHERE clause. Every transition bumps `version`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Case, F, Field, Q, Value, When

from controlplane.commands.models import Command, CommandStatus


def requeue_values(*, at: datetime, reason: str, message: str) -> dict[str, Any]:
    """Back to pending: holder and progress cleared, target_agent kept, queued_at = `at`."""
    return {
        "status": CommandStatus.PENDING,
        "agent": None,
        "acknowledged_at": None,
        "started_at": None,
        "last_progress_at": None,
        "queued_at": at,
        "status_reason": reason,
        "error_message": message,
        "version": F("version") + 1,
    }


def terminal_values(*, status: str, at: datetime, reason: str, message: str = "") -> dict[str, Any]:
    """Into a terminal state (failed, canceled, expired): completed_at = `at`."""
    return {
        "status": status,
        "completed_at": at,
        "status_reason": reason,
        "error_message": message,
        "version": F("version") + 1,
    }


def values_when(condition: Q, then: dict[str, Any], otherwise: dict[str, Any]) -> dict[str, Any]:
    """Two transitions as one UPDATE: `then` on the rows matching `condition`, `otherwise` on
    the rest. A column that only one side sets keeps its value on rows of the other side.

    job-recovery takes a job back with it: requeued while attempts are left, failed once
    they are not, in one pass over the trigger instead of two.
    """
    merged: dict[str, Any] = {}
    for name in dict.fromkeys([*then, *otherwise]):
        field = Command._meta.get_field(name)
        assert isinstance(field, Field)
        when_true, when_false = then.get(name, F(name)), otherwise.get(name, F(name))
        if _expression(when_true, field) == _expression(when_false, field):
            merged[name] = when_true
            continue
        merged[name] = Case(
            When(condition, then=_expression(when_true, field)),
            default=_expression(when_false, field),
            output_field=field,
        )
    return merged


def _expression(value: Any, field: Field[Any, Any]) -> Any:
    return value if hasattr(value, "resolve_expression") else Value(value, output_field=field)
