"""Registering a platform agent with a bootstrap token.

The token's use is counted by one conditional UPDATE (active, not expired by the
database clock, uses below max_uses) in the same transaction that creates the agent,
so concurrent registrations can never exceed max_uses and a failed agent insert gives
the use back. Every token failure raises the same exception: callers must not be able
to tell an unknown token from an expired, exhausted or revoked one.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from controlplane.agents.services import CreatedAgent, agent_create
from controlplane.common.actors import actor_for_controller
from controlplane.common.secrets import secret_lookup
from controlplane.tokens.models import BootstrapToken, TokenStatus

log = logging.getLogger(__name__)

REGISTRATION_ACTOR = actor_for_controller("agent-registration")


class TokenRejectedError(Exception):
    """The bootstrap token is unknown, malformed, expired, exhausted or revoked (deliberately vague)."""


def _token_lookup(raw_token: str) -> BootstrapToken | None:
    return secret_lookup(
        raw_token,
        BootstrapToken.objects.only("pk", "token_hash", "token_prefix"),
        prefix_field="token_prefix",
        hash_field="token_hash",
    )


def agent_register(*, bootstrap_token: str, name: str, capabilities: list[str]) -> CreatedAgent:
    """Create a platform agent (tenant None) if the token admits one more registration.

    Counts the use and creates the agent (audited as `agent.created`) in one transaction.
    Raises TokenRejectedError for every token failure, with nothing written.
    """
    token = _token_lookup(bootstrap_token)
    if token is None:
        log.warning("agent registration refused: unknown or malformed bootstrap token")
        raise TokenRejectedError
    with transaction.atomic():
        counted = BootstrapToken.objects.filter(
            pk=token.pk,
            status=TokenStatus.ACTIVE,
            expires_at__gt=Now(),
            current_uses__lt=F("max_uses"),
        ).update(current_uses=F("current_uses") + 1)
        if not counted:
            log.warning("agent registration refused: bootstrap token %s… not usable", token.token_prefix)
            raise TokenRejectedError
        created = agent_create(
            name=name,
            tenant=None,
            capabilities=capabilities,
            actor=REGISTRATION_ACTOR,
            # Key names avoid the word "token": the audit redaction would hide them.
            details={
                "registration": "bootstrap",
                "bootstrap_id": token.pk,
                "bootstrap_prefix": token.token_prefix,
            },
        )
    log.info("agent %s registered with bootstrap token %s…", created.agent.pk, token.token_prefix)
    return created
