"""API-key authentication for agents: `Authorization: Bearer <api_key>`.

The key's prefix finds the candidate rows through an index; the SHA-256 of the presented
key is then compared in constant time. Only active agents authenticate. Every failure
returns None, which the API turns into the one 401 body for all causes.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

from controlplane.agents.models import Agent, AgentStatus
from controlplane.common.secrets import prefix_of, secret_matches

MAX_KEY_LENGTH = 200  # our keys are ~56 characters; longer input is not worth hashing


def agent_authenticate(raw_key: str) -> Agent | None:
    """The active agent owning `raw_key`, or None."""
    if not raw_key or len(raw_key) > MAX_KEY_LENGTH:
        return None
    prefix = prefix_of(raw_key)
    if prefix is None:
        return None
    # Prefixes are 8 hex characters: collisions are rare but possible, so check each row.
    for agent in Agent.objects.filter(api_key_prefix=prefix, status=AgentStatus.ACTIVE):
        if secret_matches(raw_key, agent.api_key_hash):
            return agent
    return None


class AgentKeyAuth(HttpBearer):
    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> Agent | None:
        return agent_authenticate(token)
