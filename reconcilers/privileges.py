"""Who may change or run what in the reconcilers admin, beyond Django's model permissions (design.md §7).

audit-retention deletes the audit trail, so tuning it is not the same privilege as tuning
a controller: changing its config or running it for real needs `change_audit_retention`
(a dry run does not: it deletes nothing), and a retention below RETENTION_FLOOR_DAYS
needs a superuser as well. Every refusal happens before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

AUDIT_RETENTION = "audit-retention"
AUDIT_RETENTION_PERMISSION = "reconcilers.change_audit_retention"
CONFIG_VIEW_PERMISSION = "reconcilers.view_reconcilerconfig"
RETENTION_FLOOR_DAYS = 30  # below this, only a superuser may set retention_days

User = Any  # request.user: a user with has_perm (AnonymousUser has it too)


def may_change_config(user: User, controller: str) -> bool:
    """Whether `user` may change `controller`'s config at all (on top of the change permission)."""
    return controller != AUDIT_RETENTION or user.has_perm(AUDIT_RETENTION_PERMISSION)


def config_change_refusal(user: User, controller: str, params: Any, previous_params: Any) -> str | None:
    """Why `user` may not replace `controller`'s stored params `previous_params` by `params`, or None.
    A retention already below the floor (set by a superuser) does not block other edits."""
    if not may_change_config(user, controller):
        return f"changing {AUDIT_RETENTION} needs the '{AUDIT_RETENTION_PERMISSION}' permission"
    if controller != AUDIT_RETENTION or not isinstance(params, Mapping):
        return None
    days = params.get("retention_days")
    before = previous_params.get("retention_days") if isinstance(previous_params, Mapping) else None
    below_floor = isinstance(days, int) and days < RETENTION_FLOOR_DAYS and days != before
    if below_floor and not getattr(user, "is_superuser", False):
        return f"retention_days below {RETENTION_FLOOR_DAYS} needs a superuser"
    return None


def run_refusal(user: User, controllers: Iterable[str], *, dry_run: bool) -> str | None:
    """Why `user` may not run these controllers now (all refused together), or None.
    `dry_run` False covers a run whose mode the config decides (it may be real)."""
    if dry_run:
        return None
    if AUDIT_RETENTION in controllers and not user.has_perm(AUDIT_RETENTION_PERMISSION):
        return f"running {AUDIT_RETENTION} for real needs the '{AUDIT_RETENTION_PERMISSION}' permission"
    return None
