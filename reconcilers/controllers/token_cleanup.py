"""token-cleanup: moves bootstrap tokens out of `active` when they can no longer register
an agent, and deletes non-active tokens once their grace period has passed (design.md §5.4).

Steps run deletes first, so a token changed by this run is only deleted by a later one:
operators always get at least one interval (plus `grace_days`) to see why a token
stopped working. Expired wins over exhausted (the expiry step runs first, and the
exhausted step re-checks the deadline). A non-active token whose anchor timestamp is
missing is never deleted: there is no age to measure the grace period from.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from django.db.models import F
from pydantic import Field

from controlplane.tokens.models import BootstrapToken, TokenStatus
from reconcilers.queries.batches import delete_in_batches, update_in_batches
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

BATCH_SIZE = 5000  # tokens per statement; one short transaction each (registration rarely waits on one)

# The timestamp the grace period counts from, per non-active status.
DELETE_ANCHORS: tuple[tuple[str, str], ...] = (
    (TokenStatus.REVOKED, "revoked_at"),
    (TokenStatus.EXPIRED, "expires_at"),
    (TokenStatus.EXHAUSTED, "status_changed_at"),
)


class TokenCleanupParams(ControllerParams):
    grace_days: int = Field(
        30, ge=0, le=3650, description="Days a non-active token is kept (for operators) before deletion."
    )


class TokenCleanupController(Controller):
    name: ClassVar[str] = "token-cleanup"
    default_interval_seconds: ClassVar[int] = 3600
    step_names: ClassVar[tuple[str, ...]] = ("deleted", "expired", "exhausted")
    Params: ClassVar[type[ControllerParams]] = TokenCleanupParams

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        params: TokenCleanupParams = ctx.params
        now = ctx.now
        cutoff = now - timedelta(days=params.grace_days)

        deleted, deleted_ids = 0, []
        for status, anchor in DELETE_ANCHORS:
            count, batch_ids = delete_in_batches(
                ctx,
                BootstrapToken.objects.filter(status=status, **{f"{anchor}__lt": cutoff}),
                anchor,
                BATCH_SIZE,
                step="deleted",
            )
            deleted += count
            deleted_ids.extend(batch_ids)
        ctx.log_step("deleted", deleted, deleted_ids)

        expired, expired_ids = update_in_batches(
            ctx,
            BootstrapToken.objects.filter(status=TokenStatus.ACTIVE, expires_at__lt=now),
            "expires_at",
            BATCH_SIZE,
            {"status": TokenStatus.EXPIRED, "status_changed_at": now},
            step="expired",
        )
        ctx.log_step("expired", expired, expired_ids)

        exhausted, exhausted_ids = update_in_batches(
            ctx,
            BootstrapToken.objects.filter(
                status=TokenStatus.ACTIVE, expires_at__gte=now, current_uses__gte=F("max_uses")
            ),
            "expires_at",
            BATCH_SIZE,
            {"status": TokenStatus.EXHAUSTED, "status_changed_at": now},
            step="exhausted",
            sparse=True,  # used-up tokens are scattered among the valid ones by expiry
        )
        ctx.log_step("exhausted", exhausted, exhausted_ids)
        return self.result(deleted=deleted, expired=expired, exhausted=exhausted)
