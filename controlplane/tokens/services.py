"""Issuing and revoking bootstrap tokens. The raw token is returned once and never stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models.functions import Now

from controlplane.audit.services import audit_record
from controlplane.common.db import db_now
from controlplane.common.secrets import issue_secret
from controlplane.tokens.models import BootstrapToken, TokenStatus

MAX_TOKEN_TTL = timedelta(days=365)


@dataclass(frozen=True)
class IssuedToken:
    token: BootstrapToken
    raw: str  # shown once to the operator


def token_issue(
    *, description: str, ttl: timedelta, max_uses: int, actor: str, created_by_id: int | None = None
) -> IssuedToken:
    """Create an active token valid for `ttl` and `max_uses` registrations; audited."""
    if not timedelta(seconds=1) <= ttl <= MAX_TOKEN_TTL:
        raise ValueError("ttl must be between 1 second and 365 days")
    if max_uses < 1:
        raise ValueError("max_uses must be at least 1")
    secret = issue_secret("cpb")
    with transaction.atomic():
        now = db_now()
        token = BootstrapToken.objects.create(
            token_hash=secret.hash,
            token_prefix=secret.prefix,
            description=description,
            expires_at=now + ttl,
            max_uses=max_uses,
            created_by_id=created_by_id,
            status_changed_at=now,
        )
        audit_record(
            actor=actor,
            action="token.issued",
            resource_type="bootstrap_token",
            resource_id=token.pk,
            details={
                "prefix": secret.prefix,
                "max_uses": max_uses,
                "expires_at": token.expires_at.isoformat(),
            },
            at=now,
        )
    return IssuedToken(token=token, raw=secret.raw)


def token_revoke(token_id: int, *, actor: str) -> bool:
    """Revoke a token unless it is already revoked. Conditional UPDATE; audited. Returns changed."""
    with transaction.atomic():
        changed = (
            BootstrapToken.objects.filter(pk=token_id)
            .exclude(status=TokenStatus.REVOKED)
            .update(status=TokenStatus.REVOKED, revoked_at=Now(), status_changed_at=Now())
        )
        if changed:
            audit_record(
                actor=actor, action="token.revoked", resource_type="bootstrap_token", resource_id=token_id
            )
    return bool(changed)
