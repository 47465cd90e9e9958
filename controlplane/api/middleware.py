"""Browser-only middleware: the agent API skips the session, CSRF, user and messages work.

Agents authenticate every request with a bearer key and never carry a cookie, so the
session, CSRF, authentication and messages middleware only cost time on /api/v1/ (the
heartbeat is the most frequent request of the product). Each class below wraps one of
Django's and steps aside for the agent API's paths; everything else (the admin, /metrics,
/readyz) gets the original unchanged. Prometheus, security and common middleware still
run for the API.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponseForbidden
from django.middleware import csrf
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


class CsrfViewMiddleware(_BrowserOnly, csrf.CsrfViewMiddleware):
    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponseForbidden | None:
        if is_agent_api(request):
            return None
        return super().process_view(request, view, args, kwargs)


class AuthenticationMiddleware(_BrowserOnly, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(_BrowserOnly, messages.MessageMiddleware):
    pass
