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
from django.db.models import F

from controlplane.audit.services import audit_record
from controlplane.commands.models import TERMINAL_STATUSES, Command, CommandStatus, StatusReason
from controlplane.commands.services import queue_entry_priorities
from controlplane.commands.transitions import requeue_values, terminal_values
from controlplane.common.db import db_now
from controlplane.common.errors import ConcurrentModificationError, InvalidTransition

CANCELABLE_STATUSES = (CommandStatus.PENDING, CommandStatus.ACKNOWLEDGED, CommandStatus.RUNNING)
# SPEC section 6: "retry a failed job". Expired and canceled jobs were given up on purpose.
RETRYABLE_STATUSES = (CommandStatus.FAILED,)
# Fields an operator may edit on a command that has not finished; the lifecycle fields
# belong to agents and controllers.
COMMAND_OPERATOR_FIELDS = frozenset({"payload", "expires_at"})


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in values.items()}


def _locked_state(command_id: int) -> Mapping[str, Any]:
    row = (
        Command.objects.select_for_update()
        .filter(pk=command_id)
        .values("status", "version", "dispatch_attempts", "queue_priority", *COMMAND_OPERATOR_FIELDS)
        .first()
    )
    if row is None:
        raise Command.DoesNotExist(f"command #{command_id} does not exist")
    return row


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
    if expected_version is not None and row["version"] != expected_version:
        raise ConcurrentModificationError(
            f"command #{command_id} changed concurrently, reload: version {expected_version} was "
            f"loaded, the database has {row['version']}; nothing was changed"
        )


def _lost_race(command_id: int) -> ConcurrentModificationError:
    return ConcurrentModificationError(
        f"command #{command_id} changed concurrently, reload: it was written while this action ran; "
        "nothing was changed"
    )


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
        changed = Command.objects.filter(
            pk=command_id, status__in=CANCELABLE_STATUSES, version=row["version"]
        ).update(
            **terminal_values(
                status=CommandStatus.CANCELED,
                at=at,
                reason=StatusReason.CANCELED_BY_OPERATOR,
                message=f"canceled by {actor}",
            )
        )
        if not changed:
            raise _lost_race(command_id)
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
    recomputed with the queue-priority formula and current params (as if just enqueued) when
    that controller is registered; otherwise it keeps its last value until the next sweep.
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
        values = requeue_values(at=at, reason=StatusReason.RETRIED_BY_OPERATOR, message="")
        values.update(dispatch_attempts=0, completed_at=None)
        priority = _fresh_priority(command_id)
        if priority is not None:
            values["queue_priority"] = priority
        changed = Command.objects.filter(
            pk=command_id, status__in=RETRYABLE_STATUSES, version=row["version"]
        ).update(**values)
        if not changed:
            raise _lost_race(command_id)
        audit_record(
            actor=actor,
            action="command.retried",
            resource_type="command",
            resource_id=command_id,
            details={
                "from_status": row["status"],
                "dispatch_attempts_before": row["dispatch_attempts"],
                "queue_priority": priority if priority is not None else row["queue_priority"],
                "version": row["version"] + 1,
            },
            at=at,
        )
    return True


def _fresh_priority(command_id: int) -> int | None:
    """The priority a platform job gets on re-entering the queue now, or None to keep it."""
    # Imported here: the registry imports the controllers, which import this app.
    from reconcilers.registry import UnknownControllerError

    job = Command.objects.filter(pk=command_id).values("is_platform_job", "tenant_id", "tenant__plan").get()
    if not job["is_platform_job"]:
        return None
    try:
        return queue_entry_priorities(job["tenant_id"], job["tenant__plan"], 1)[0]
    except UnknownControllerError:
        return None


def command_update(command_id: int, *, changes: Mapping[str, Any], expected_version: int, actor: str) -> bool:
    """An operator's edit of payload / expires_at on an unfinished command, as one conditional
    UPDATE of exactly those columns (WHERE version = expected_version AND status unfinished).

    Returns False if `changes` is empty. Raises ValueError for a field operators may not
    edit, InvalidTransition for a finished command, ConcurrentModificationError if a claim,
    progress report or controller bumped the version since the operator loaded the row.
    """
    unknown = set(changes) - COMMAND_OPERATOR_FIELDS
    if unknown:
        raise ValueError(f"not editable by operators: {', '.join(sorted(unknown))}")
    if not changes:
        return False
    with transaction.atomic():
        row = _locked_state(command_id)
        if row["status"] in TERMINAL_STATUSES:
            raise InvalidTransition(
                f"cannot edit command #{command_id}: it is {row['status']} and finished commands never change"
            )
        _check(
            command_id,
            row,
            verb="edit",
            done="edited",
            allowed=CANCELABLE_STATUSES,
            expected_version=expected_version,
        )
        # A form may resubmit values it did not change; writing them would bump version for nothing.
        changes = {field: value for field, value in changes.items() if row[field] != value}
        if not changes:
            return False
        changed = Command.objects.filter(
            pk=command_id, status__in=CANCELABLE_STATUSES, version=expected_version
        ).update(**changes, version=F("version") + 1)
        if not changed:
            raise _lost_race(command_id)
        audit_record(
            actor=actor,
            action="command.updated",
            resource_type="command",
            resource_id=command_id,
            details={"after": _jsonable(changes), "version": expected_version + 1},
        )
    return True
