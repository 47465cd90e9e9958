"""API-key authentication for agents: `Authorization: Bearer <api_key>`.

The key's prefix finds the candidate rows through an index; the SHA-256 of the presented
key is then compared in constant time. Only active agents authenticate. Every failure
returns None, which the API turns into the one 401 body for all causes.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

from controlplane.agents.models import Agent, AgentStatus
from controlplane.common.secrets import secret_lookup


def agent_authenticate(raw_key: str) -> Agent | None:
    """The active agent owning `raw_key`, or None."""
    return secret_lookup(
        raw_key,
        Agent.objects.filter(status=AgentStatus.ACTIVE),
        prefix_field="api_key_prefix",
        hash_field="api_key_hash",
    )


class AgentKeyAuth(HttpBearer):
    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> Agent | None:
        return agent_authenticate(token)
