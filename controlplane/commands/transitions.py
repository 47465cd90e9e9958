"""Column values of the command lifecycle transitions, shared by controllers, services and admin.

Each function returns keyword arguments for a set-based `QuerySet.update(...)`; the caller
puts the state condition in the WHERE clause. Every transition bumps `version`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import F

from controlplane.commands.models import CommandStatus


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
