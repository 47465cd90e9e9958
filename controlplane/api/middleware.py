"""A lighter request path for the agent API: no session, user, messages or per-request
connection health check on /api/v1/.

Agents authenticate every request with a bearer key and never carry a cookie, so the
session, authentication and messages middleware only cost time on /api/v1/ (the heartbeat
is the most frequent request of the product). Each class below wraps one of Django's and
steps aside for the agent API's paths; everything else (the admin, /metrics, /readyz) gets
the original unchanged. Prometheus, security and common middleware still run for the API.
CSRF stays Django's own, unwrapped: `check --deploy` looks for it by name, and for the API's
views (csrf-exempt, no cookie) it only reads an absent cookie.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.db import connections
from django.http import HttpRequest
from django.utils.deprecation import MiddlewareMixin

AGENT_API_PATH_PREFIX = "/api/v1/"


def is_agent_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(AGENT_API_PATH_PREFIX)


class _BrowserOnly(MiddlewareMixin):
    """Runs the Django middleware it is mixed into, except for the agent API, whose requests
    go straight on. Subclasses of Django's own, so the admin's system checks find them."""

    def __call__(self, request: HttpRequest) -> Any:
        if is_agent_api(request):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_BrowserOnly, sessions.SessionMiddleware):
    pass


class AuthenticationMiddleware(_BrowserOnly, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(_BrowserOnly, messages.MessageMiddleware):
    pass


class AgentApiConnectionMiddleware(MiddlewareMixin):
    """The agent API skips Django's per-request connection health check (CONN_HEALTH_CHECKS).

    The check is a `SELECT 1` round trip before each request's first query: one of three
    round trips of a heartbeat, measured at about a sixth of a heartbeat's cost. For the
    agent API it buys little: a connection the server closed meanwhile fails the request's
    first statement instead, the API answers 503 `unavailable` (errors.py), Django drops
    the connection at the end of that request (errors occurred, is_usable fails) and the
    next request opens a new one. Agents retry every interval anyway, so a database
    restart costs each web worker one refused agent request. The admin and the rest keep
    the check, where a human would otherwise see the error.
    """

    def process_request(self, request: HttpRequest) -> None:
        if is_agent_api(request):
            for alias in connections:
                # Django's own flag, set after each check (django.db.backends.base.base).
                connections[alias].health_check_done = True  # type: ignore[attr-defined]
