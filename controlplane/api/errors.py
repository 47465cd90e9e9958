"""One error shape for the whole agent API: `{"error": code, "detail": text}` with a 4xx status.

Every failure path (validation, malformed JSON, authentication, conflicts, unknown ids)
goes through the handlers installed here, so clients parse one format and the OpenAPI
schema can promise it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from controlplane.agents.services import AgentNotActiveError
from controlplane.api.auth import auth_forget

log = logging.getLogger(__name__)

UNAUTHORIZED_DETAIL = "missing or invalid credentials"
MAX_VALIDATION_MESSAGES = 5  # keep error bodies short; the first few say enough


class ApiError(Exception):
    """Raised by views to answer with a 4xx JSON error."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def error_response(api: NinjaAPI, request: HttpRequest, status: int, code: str, detail: str) -> HttpResponse:
    return api.create_response(request, {"error": code, "detail": detail}, status=status)


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:MAX_VALIDATION_MESSAGES]:
        loc = tuple(error.get("loc", ()))
        if loc[:1] == ("body",):
            loc = ("body", *loc[2:])  # drop ninja's internal parameter name
        location = ".".join(str(part) for part in loc)
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    if len(errors) > MAX_VALIDATION_MESSAGES:
        parts.append(f"... and {len(errors) - MAX_VALIDATION_MESSAGES} more")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(api: NinjaAPI) -> None:
    """Replace ninja's default handlers (which answer `{"detail": ...}`) with ours."""

    @api.exception_handler(ApiError)
    def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return error_response(api, request, exc.status, exc.code, exc.detail)

    @api.exception_handler(ValidationError)
    def on_validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        return error_response(api, request, 422, "validation_error", _validation_detail(exc.errors))

    @api.exception_handler(AuthenticationError)
    def on_authentication(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        # One body for every cause (missing header, unknown key, inactive agent): a caller
        # learns nothing about which keys or agents exist.
        return error_response(api, request, 401, "unauthorized", UNAUTHORIZED_DETAIL)

    @api.exception_handler(AgentNotActiveError)
    def on_agent_not_active(request: HttpRequest, exc: AgentNotActiveError) -> HttpResponse:
        # The key authenticated (perhaps from this process's cache), but the write's own
        # status check found the agent disabled or revoked meanwhile: the same 401, and the
        # key is forgotten so the next request asks the database (auth.py).
        key = getattr(request, "agent_key", None)
        if key:
            auth_forget(key)
        return error_response(api, request, 401, "unauthorized", UNAUTHORIZED_DETAIL)

    def on_database_unavailable(request: HttpRequest, exc: Any) -> HttpResponse:
        # The database is unreachable, or this worker's connection was closed under it (the
        # agent API skips the per-request health check, middleware.py). Django drops the
        # connection after this request; the agent retries at its next interval.
        log.warning("agent API: database unavailable: %s", exc)
        response = error_response(api, request, 503, "unavailable", "the database is unavailable; retry")
        response["Retry-After"] = "1"
        return response

    api.add_exception_handler(OperationalError, on_database_unavailable)
    api.add_exception_handler(InterfaceError, on_database_unavailable)

    @api.exception_handler(HttpError)
    def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        # Ninja raises HttpError(400) when the body is not JSON.
        code = "malformed_json" if exc.status_code == 400 else "http_error"
        detail = "request body is not valid JSON" if exc.status_code == 400 else str(exc)
        return error_response(api, request, exc.status_code, code, detail)

    @api.exception_handler(Http404)
    def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return error_response(api, request, 404, "not_found", "no such resource")
