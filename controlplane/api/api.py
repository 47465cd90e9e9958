"""The agent protocol (design.md §9): registration, heartbeats, claims and attempt-fenced reports.

Views are thin: parse, call one service, map its outcome to a status code. Every error is
`{"error", "detail"}` (see errors.py) and every status code is declared per operation, so
the OpenAPI schema at /api/schema/ is a complete contract.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from ninja import NinjaAPI, Path, Status

from controlplane.agents.models import Agent
from controlplane.agents.services import agent_heartbeat
from controlplane.api.auth import AgentKeyAuth
from controlplane.api.errors import UNAUTHORIZED_DETAIL, ApiError, install_error_handlers
from controlplane.api.schemas import (
    MAX_ID,
    ClaimOut,
    ErrorOut,
    FailIn,
    HeartbeatOut,
    ProgressIn,
    RegisterIn,
    RegisterOut,
    ReportIn,
    ReportOut,
)
from controlplane.commands.services import (
    CommandConflictError,
    CommandNotFoundError,
    command_claim,
    command_report_complete,
    command_report_fail,
    command_report_progress,
    command_report_start,
)
from controlplane.tokens.registration import TokenRejectedError, agent_register

api = NinjaAPI(
    title="controlplane agent API",
    version="1",
    description="Agents register with a bootstrap token, heartbeat, claim jobs and report on them.",
    urls_namespace="agent-api",
    openapi_url=None,  # served at /api/schema/ by `openapi_schema` below
    docs_url=None,
)
install_error_handlers(api)

_ERRORS_AUTH: dict[int, Any] = {400: ErrorOut, 401: ErrorOut, 503: ErrorOut}
_ERRORS_REPORT: dict[int, Any] = {**_ERRORS_AUTH, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut}
JobId = Path(..., ge=1, le=MAX_ID, description="The job's id, from the claim.")


def _agent(request: HttpRequest) -> Agent:
    agent = request.auth  # type: ignore[attr-defined]
    assert isinstance(agent, Agent)
    return agent


def _reject_malformed_body(request: HttpRequest) -> None:
    """Endpoints without a body still refuse a declared-JSON body that is not JSON (a client bug)."""
    if request.content_type == "application/json" and request.body.strip():
        try:
            json.loads(request.body)
        except ValueError:
            raise ApiError(400, "malformed_json", "request body is not valid JSON") from None


@api.post(
    "/agents/register",
    response={201: RegisterOut, 400: ErrorOut, 401: ErrorOut, 422: ErrorOut, 503: ErrorOut},
    auth=None,
    summary="Register a platform agent with a bootstrap token",
    description="Every token failure (unknown, malformed, expired, exhausted, revoked) gets the "
    "same 401 body. The API key is shown once.",
)
def register(request: HttpRequest, body: RegisterIn) -> Status[RegisterOut]:
    try:
        created = agent_register(
            bootstrap_token=body.bootstrap_token, name=body.name, capabilities=list(body.capabilities)
        )
    except TokenRejectedError:
        raise ApiError(401, "unauthorized", UNAUTHORIZED_DETAIL) from None
    return Status(201, RegisterOut(agent_id=created.agent.pk, api_key=created.api_key))


@api.post(
    "/agents/heartbeat",
    response={200: HeartbeatOut, **_ERRORS_AUTH},
    auth=AgentKeyAuth(),
    summary="Renew last_seen_at and the lease",
)
def heartbeat(request: HttpRequest) -> HeartbeatOut:
    _reject_malformed_body(request)
    result = agent_heartbeat(_agent(request).pk)  # AgentNotActiveError: 401 (errors.py)
    return HeartbeatOut(
        heartbeat_interval_seconds=settings.AGENT_HEARTBEAT_INTERVAL_SECONDS,
        lease_expires_at=result.lease_expires_at,
    )


@api.post(
    "/jobs/claim",
    response={200: ClaimOut, 204: None, **_ERRORS_AUTH},
    auth=AgentKeyAuth(),
    summary="Claim the best next job",
    description="204 when there is no job for this agent, or it is not online (heartbeat first), "
    "or it already holds max_concurrent_jobs.",
)
def claim(request: HttpRequest) -> Status[ClaimOut | None]:
    _reject_malformed_body(request)
    claimed = command_claim(_agent(request).pk)  # AgentNotActiveError: 401 (errors.py)
    if claimed is None:
        return Status(204, None)
    return Status(
        200,
        ClaimOut(
            job_id=claimed.command_id, attempt=claimed.attempt, kind=claimed.kind, payload=claimed.payload
        ),
    )


def _fenced(request: HttpRequest, job_id: int, attempt: int, report: Any, *args: Any) -> ReportOut:
    try:
        status = report(_agent(request), job_id, attempt, *args)
    except CommandNotFoundError:
        raise ApiError(404, "not_found", f"no job {job_id}") from None
    except CommandConflictError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return ReportOut(job_id=job_id, attempt=attempt, status=status)


_REPORT_409 = "409 when the job is not held by this agent at this attempt, or is in another state."


@api.post(
    "/jobs/{job_id}/start",
    response={200: ReportOut, **_ERRORS_REPORT},
    auth=AgentKeyAuth(),
    summary="acknowledged -> running",
    description=_REPORT_409,
)
def start(request: HttpRequest, body: ReportIn, job_id: int = JobId) -> ReportOut:
    return _fenced(request, job_id, body.attempt, command_report_start)


@api.post(
    "/jobs/{job_id}/progress",
    response={200: ReportOut, **_ERRORS_REPORT},
    auth=AgentKeyAuth(),
    summary="Record progress (an acknowledged job becomes running)",
    description=_REPORT_409,
)
def progress(request: HttpRequest, body: ProgressIn, job_id: int = JobId) -> ReportOut:
    return _fenced(request, job_id, body.attempt, command_report_progress, body.message)


@api.post(
    "/jobs/{job_id}/complete",
    response={200: ReportOut, **_ERRORS_REPORT},
    auth=AgentKeyAuth(),
    summary="acknowledged/running -> completed (terminal)",
    description=_REPORT_409,
)
def complete(request: HttpRequest, body: ReportIn, job_id: int = JobId) -> ReportOut:
    return _fenced(request, job_id, body.attempt, command_report_complete)


@api.post(
    "/jobs/{job_id}/fail",
    response={200: ReportOut, **_ERRORS_REPORT},
    auth=AgentKeyAuth(),
    summary="acknowledged/running -> failed (terminal), with the error text",
    description=_REPORT_409,
)
def fail(request: HttpRequest, body: FailIn, job_id: int = JobId) -> ReportOut:
    return _fenced(request, job_id, body.attempt, command_report_fail, body.error)


def openapi_schema(request: HttpRequest) -> JsonResponse:
    """The OpenAPI document of the agent API, served at /api/schema/."""
    prefix = reverse("agent-api:api-root")
    return JsonResponse(api.get_openapi_schema(path_prefix=prefix))
