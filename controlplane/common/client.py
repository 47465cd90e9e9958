"""The address of the client behind a request, as every limit sees it (throttles, admin lockout).

With TRUSTED_PROXY_COUNT = 0 it is REMOTE_ADDR: X-Forwarded-For is ignored, since anyone can
send it. With N trusted proxies it is the N-th address from the right of X-Forwarded-For,
the one the outermost trusted proxy appended: addresses to its left were written by the
client and may be anything, so rotating them never changes the answer.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    """The client's address; "" for a request that has none (built in-process, e.g. force_login)."""
    remote = str(request.META.get("REMOTE_ADDR") or "")
    proxies = settings.TRUSTED_PROXY_COUNT
    if not proxies:
        return remote
    forwarded = [part.strip() for part in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [part for part in forwarded if part]
    if len(forwarded) < proxies:
        # Fewer hops than configured proxies: the request did not come through all of them
        # (or the setting is wrong). The nearest address is the only one not client-written.
        return remote
    return forwarded[-proxies]


def client_address_or_none(request: HttpRequest) -> str | None:
    """django-axes' AXES_CLIENT_IP_CALLABLE: None, not "", where there is no address (its
    column is an IP address)."""
    return client_address(request) or None
