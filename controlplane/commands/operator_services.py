"""Operator actions on commands (cancel, retry, edit): conditional on `version`, audited.

Each action locks the row, checks its state and the version the operator saw, then
writes with the same conditions in the WHERE clause (so a concurrent claim, progress
report or controller sweep can never be overwritten, even where row locks are a no-op
as on SQLite) and records an AuditLog row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q

from controlplane.audit.services import audit_record
from controlplane.commands.models import TERMINAL_STATUSES, Command, CommandStatus, StatusReason
from controlplane.commands.transitions import requeue_values, terminal_values
from controlplane.common.db import db_now
from controlplane.common.errors import InvalidTransition
from controlplane.common.versioned import lost_race, row_lock, version_check, versioned_edit, versioned_update

CANCELABLE_STATUSES = (CommandStatus.PENDING, CommandStatus.ACKNOWLEDGED, CommandStatus.RUNNING)
# Only a failed job is retried (design.md §7): expired and canceled jobs were given up on purpose.
RETRYABLE_STATUSES = (CommandStatus.FAILED,)
# Fields an operator may edit on a command that has not finished; the lifecycle fields
# belong to agents and controllers.
COMMAND_OPERATOR_FIELDS = frozenset({"payload", "expires_at"})


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in values.items()}


def _label(command_id: int) -> str:
    return f"command #{command_id}"


def _locked_state(command_id: int) -> Mapping[str, Any]:
    return row_lock(
        Command,
        command_id,
        ("status", "dispatch_attempts", "queue_priority", *COMMAND_OPERATOR_FIELDS),
        label=_label(command_id),
    )


def _check(
    command_id: int,
    row: Mapping[str, Any],
    *,
    verb: str,
    done: str,
    allowed: Collection[str],
    expected_version: int | None,
) -> None:
    if row["status"] not in allowed:
        raise InvalidTransition(
            f"cannot {verb} command #{command_id}: it is {row['status']}, "
            f"only {' / '.join(allowed)} commands can be {done}"
        )
    version_check(_label(command_id), row, expected_version)


def command_cancel(command_id: int, *, expected_version: int | None, actor: str) -> bool:
    """Cancel a pending, acknowledged or running command (status_reason canceled_by_operator).

    Returns False if it is already canceled. Raises InvalidTransition for any other terminal
    state (terminal states never change), ConcurrentModificationError if `expected_version`
    is given and is not the row's version, Command.DoesNotExist if there is no such command.
    The holder is kept, so the history shows who had the job when it was canceled.
    """
    with transaction.atomic():
        row = _locked_state(command_id)
        if row["status"] == CommandStatus.CANCELED:
            return False
        _check(
            command_id,
            row,
            verb="cancel",
            done="canceled",
            allowed=CANCELABLE_STATUSES,
            expected_version=expected_version,
        )
        at = db_now()
        values = terminal_values(
            status=CommandStatus.CANCELED,
            at=at,
            reason=StatusReason.CANCELED_BY_OPERATOR,
            message=f"canceled by {actor}",
        )
        if not versioned_update(
            Command, command_id, row["version"], Q(status__in=CANCELABLE_STATUSES), values
        ):
            raise lost_race(_label(command_id))
        audit_record(
            actor=actor,
            action="command.canceled",
            resource_type="command",
            resource_id=command_id,
            details={"from_status": row["status"], "version": row["version"] + 1},
            at=at,
        )
    return True


def command_retry(command_id: int, *, expected_version: int | None, actor: str) -> bool:
    """Put a failed command back in the queue: pending, dispatch_attempts 0, queued_at now.

    The holder, progress timestamps, completed_at and error_message are cleared, target_agent
    is kept, status_reason is retried_by_operator. A platform job's queue_priority is
    recomputed with the queue priority policy in effect, as if just enqueued.
    Returns True; raises InvalidTransition unless the command is failed,
    ConcurrentModificationError on a version mismatch.
    """
    with transaction.atomic():
        row = _locked_state(command_id)
        _check(
            command_id,
            row,
            verb="retry",
            done="retried",
            allowed=RETRYABLE_STATUSES,
            expected_version=expected_version,
        )
        at = db_now()
        # requeue_values recomputes a platform job's priority in the UPDATE itself.
        values = requeue_values(at=at, reason=StatusReason.RETRIED_BY_OPERATOR, message="")
        values.update(dispatch_attempts=0, completed_at=None)
        if not versioned_update(
            Command, command_id, row["version"], Q(status__in=RETRYABLE_STATUSES), values
        ):
            raise lost_race(_label(command_id))
        priority = Command.objects.filter(pk=command_id).values_list("queue_priority", flat=True).get()
        audit_record(
            actor=actor,
            action="command.retried",
            resource_type="command",
            resource_id=command_id,
            details={
                "from_status": row["status"],
                "dispatch_attempts_before": row["dispatch_attempts"],
                "queue_priority": priority,
                "version": row["version"] + 1,
            },
            at=at,
        )
    return True


def command_update(command_id: int, *, changes: Mapping[str, Any], expected_version: int, actor: str) -> bool:
    """An operator's edit of payload / expires_at on an unfinished command, as one conditional
    UPDATE of exactly those columns (WHERE version = expected_version AND status unfinished).

    Returns False if nothing changes. Raises ValueError for a field operators may not
    edit, InvalidTransition for a finished command, ConcurrentModificationError if a claim,
    progress report or controller bumped the version since the operator loaded the row.
    """

    def unfinished(row: Mapping[str, Any], changed: Mapping[str, Any]) -> Q:
        if row["status"] in TERMINAL_STATUSES:
            raise InvalidTransition(
                f"cannot edit command #{command_id}: it is {row['status']} and finished commands never change"
            )
        return Q(status__in=CANCELABLE_STATUSES)

    with transaction.atomic():
        edit = versioned_edit(
            Command,
            command_id,
            changes=changes,
            expected_version=expected_version,
            editable=COMMAND_OPERATOR_FIELDS,
            label=_label(command_id),
            read=("status",),
            guard=unfinished,
        )
        if edit is None:
            return False
        audit_record(
            actor=actor,
            action="command.updated",
            resource_type="command",
            resource_id=command_id,
            details={"after": _jsonable(edit.changes), "version": expected_version + 1},
        )
    return True
