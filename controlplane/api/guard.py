"""Bad input at the edge of the agent API: nesting, size, and one error shape for everything.

- A JSON body nested deeper than API_JSON_MAX_DEPTH (default 64) is a 400 before any parser
  sees it: Python's json recurses, and a 100,000-deep body would otherwise be a
  RecursionError (a 500) on some Python versions and a slow parse on the others.
- A body over Django's DATA_UPLOAD_MAX_MEMORY_SIZE is a 413.
- Any 4xx under /api/v1/ that is not already the API's JSON error (a wrong method, an unknown
  path, Django's own refusals) is rewritten to `{"error", "detail"}`, status and headers kept,
  so clients parse one shape (controlplane.api.errors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

API_PREFIX = "/api/v1/"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether `body` opens more than `limit` arrays/objects inside each other. Strings are
    skipped first, so brackets inside them do not count; the scan is linear and never recurses."""
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b"", body)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def api_error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def _is_api_error(response: HttpResponse) -> bool:
    if not response.get("Content-Type", "").startswith("application/json"):
        return False
    try:
        body = json.loads(response.content)
    except (ValueError, AttributeError):
        return False
    return isinstance(body, dict) and "error" in body and "detail" in body


def _body_too_large(limit_bytes: int | None) -> HttpResponse:
    return api_error(413, "body_too_large", f"request body is over {limit_bytes} bytes")


class ApiGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        refused = self._refuse_body(request)
        response = refused if refused is not None else self.get_response(request)
        client_error = 400 <= response.status_code < 500 and not getattr(response, "streaming", False)
        if client_error and not _is_api_error(response):
            response = self._reshaped(response)
        return response

    @staticmethod
    def _refuse_body(request: HttpRequest) -> HttpResponse | None:
        limit_bytes = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        # The 413 answer is built only when refusing: a JSON response built on every request
        # cost a heartbeat about 4 % of its CPU.
        if limit_bytes is not None and declared > limit_bytes:
            return _body_too_large(limit_bytes)
        try:
            body = request.body
        except RequestDataTooBig:
            return _body_too_large(limit_bytes)
        limit = settings.API_JSON_MAX_DEPTH
        if body and json_depth_exceeds(body, limit):
            return api_error(400, "too_deep", f"JSON nested deeper than {limit} levels")
        return None

    @staticmethod
    def _reshaped(response: HttpResponse) -> HttpResponse:
        status = response.status_code
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "client error"
        reshaped = api_error(status, _CODES.get(status, "http_error"), phrase.lower())
        for header in _KEPT_HEADERS:
            if header in response:
                reshaped[header] = response[header]
        return reshaped
