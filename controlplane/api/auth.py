"""API-key authentication for agents: `Authorization: Bearer <api_key>`, with a short
per-process cache.

The key's prefix finds the candidate rows through an index; the SHA-256 of the presented
key is then compared in constant time. Only active agents authenticate. Every failure
returns None, which the API turns into the one 401 body for all causes.

The cache, and the rule that makes it safe
------------------------------------------
A successful check is remembered in this process (a dict in this module, per gunicorn
worker, never shared) for AUTH_CACHE_SECONDS, keyed by the SHA-256 of the key, so an agent
that heartbeats and claims in a row pays for one key lookup, not one per request. Nothing
tells this cache that an operator disabled or revoked the agent meanwhile. That is safe only
because **every write an authenticated agent can make re-checks `status = 'active'` in its
own SQL statement**: the heartbeat's UPDATE, the claim's locked agent read and every report's
UPDATE. A write refused that way raises AgentNotActiveError, the API answers 401 and forgets
the key here (`auth_forget`). So a revoked key is refused on its very next request, cached or
not; what the cache can save is only the key lookup, never the status check. An endpoint
added later must keep that rule, or authenticate with `AgentKeyAuth(cached=False)`.
Unknown keys are never cached (a flood of made-up keys cannot grow the dict).
"""

from __future__ import annotations

import time

from django.http import HttpRequest
from ninja.security import HttpBearer

from controlplane.agents.models import Agent, AgentStatus
from controlplane.common.db import prepared_cursor
from controlplane.common.secrets import MAX_SECRET_LENGTH, hash_secret, prefix_of, secret_matches

AUTH_CACHE_SECONDS = 5.0  # a key check is reused this long by one process (see above)
AUTH_CACHE_MAX_KEYS = 50_000  # about 10 MB per process; a full cache drops what has expired

# SHA-256 of the key -> (the agent, monotonic time the entry stops being used)
_cache: dict[str, tuple[Agent, float]] = {}

# Written out, not built by the ORM: one indexed lookup on every request that misses the
# cache, and compiling the queryset cost more than running it. Only what the API needs.
_KEY_CANDIDATES = """
    SELECT id, tenant_id, is_platform_agent, api_key_hash
      FROM {agents}
     WHERE api_key_prefix = %s AND status = %s
"""


def agent_authenticate(raw_key: str) -> Agent | None:
    """The active agent owning `raw_key`, or None. Always asks the database."""
    if not raw_key or len(raw_key) > MAX_SECRET_LENGTH:
        return None
    prefix = prefix_of(raw_key)
    if prefix is None:
        return None
    with prepared_cursor() as cursor:
        cursor.execute(_KEY_CANDIDATES.format(agents=Agent._meta.db_table), [prefix, AgentStatus.ACTIVE])
        rows = cursor.fetchall()
    # Prefixes are short, so several agents may share one: every candidate is compared.
    for agent_id, tenant_id, is_platform_agent, key_hash in rows:
        if secret_matches(raw_key, key_hash):
            return Agent(id=agent_id, tenant_id=tenant_id, is_platform_agent=is_platform_agent)
    return None


def agent_authenticate_cached(raw_key: str) -> Agent | None:
    """agent_authenticate, reusing this process's answer for AUTH_CACHE_SECONDS (module docstring)."""
    if not raw_key or len(raw_key) > MAX_SECRET_LENGTH:
        return None
    key_hash = hash_secret(raw_key)
    now = time.monotonic()
    entry = _cache.get(key_hash)
    if entry is not None and entry[1] > now:
        return entry[0]
    agent = agent_authenticate(raw_key)
    if agent is None:
        _cache.pop(key_hash, None)
        return None
    if len(_cache) >= AUTH_CACHE_MAX_KEYS:
        for stale in [h for h, (_agent, until) in _cache.items() if until <= now]:
            del _cache[stale]
        if len(_cache) >= AUTH_CACHE_MAX_KEYS:
            _cache.clear()
    _cache[key_hash] = (agent, now + AUTH_CACHE_SECONDS)
    return agent


def auth_forget(raw_key: str) -> None:
    """Drop a key from this process's cache (its agent's write was refused as not active)."""
    _cache.pop(hash_secret(raw_key), None)


def auth_cache_clear() -> None:
    _cache.clear()


class AgentKeyAuth(HttpBearer):
    openapi_scheme = "bearer"

    def __init__(self, *, cached: bool = True) -> None:
        super().__init__()
        self.cached = cached

    def authenticate(self, request: HttpRequest, token: str) -> Agent | None:
        request.agent_key = token  # type: ignore[attr-defined]  # for auth_forget on a refused write
        return agent_authenticate_cached(token) if self.cached else agent_authenticate(token)
