"""Request and response bodies of the agent protocol (pydantic v2, rendered into the OpenAPI schema).

Strings reject NUL characters and lone surrogates up front: PostgreSQL cannot store either,
and a client's bad input must be a 4xx, never a database error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_ATTEMPT = 2**31 - 1  # dispatch_attempts is a 32-bit integer column
MAX_ID = 2**63 - 1  # ids are 64-bit


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Capability = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_storable)]
Secret = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Attempt = Annotated[int, Field(ge=1, le=MAX_ATTEMPT, strict=True)]


class StrictIn(BaseModel):
    """Request bodies: unknown keys are rejected, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorOut(BaseModel):
    error: str = Field(description="Stable machine-readable code, e.g. `unauthorized`, `conflict`.")
    detail: str = Field(description="Readable explanation.")


class RegisterIn(StrictIn):
    bootstrap_token: Secret = Field(description="A bootstrap token issued by an operator.")
    name: Name = Field(description="Name of the agent.")
    capabilities: list[Capability] = Field(default_factory=list, max_length=50)


class RegisterOut(BaseModel):
    agent_id: int
    api_key: str = Field(description="Shown once: store it; only its hash is kept.")


class HeartbeatOut(BaseModel):
    heartbeat_interval_seconds: int
    lease_expires_at: datetime | None = Field(description="Null for tenant agents (they hold no lease).")


class ClaimOut(BaseModel):
    job_id: int
    attempt: int = Field(description="Send it back with every report on this job.")
    kind: str
    payload: dict[str, Any]


class ReportIn(StrictIn):
    attempt: Attempt


class ProgressIn(ReportIn):
    message: Annotated[str, Field(max_length=2000), AfterValidator(_storable)] = ""


class FailIn(ReportIn):
    error: Annotated[str, Field(min_length=1, max_length=4000), AfterValidator(_storable)]


class ReportOut(BaseModel):
    job_id: int
    attempt: int
    status: str
