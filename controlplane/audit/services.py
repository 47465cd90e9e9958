"""Writing the audit log: one function, with recursive redaction of secrets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controlplane.audit.models import AuditLog
from controlplane.common.db import db_now

REDACTED = "[REDACTED]"
# Key names that carry secrets, matched case-insensitively anywhere in the key
# (so "api_key", "X-Api-Key", "db_password" and "Authorization" are all caught).
SECRET_KEY_PATTERN = re.compile(r"pass(word)?|token|api[_-]?key|secret|authori[sz]ation", re.IGNORECASE)


def redact_secrets(value: Any) -> Any:
    """Return a copy of `value` with every secret-named key's value replaced, at any depth."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and SECRET_KEY_PATTERN.search(key) else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_secrets(item) for item in value]
    return value


def audit_record(
    *,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: object = "",
    details: Mapping[str, Any] | None = None,
    success: bool = True,
    at: datetime | None = None,
) -> AuditLog:
    """Append one audit row. Secrets in `details` are redacted at any depth before storage.

    Call it inside the caller's transaction so the audit row commits (or rolls back)
    together with the change it describes.
    """
    return AuditLog.objects.create(
        created_at=at or db_now(),
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id="" if resource_id is None else str(resource_id),
        details=redact_secrets(dict(details or {})),
        success=success,
    )
