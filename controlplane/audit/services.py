"""Writing the audit log: one function, with secrets redacted by key name and by shape."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controlplane.audit.models import AuditLog
from controlplane.audit.redaction import redact_secrets
from controlplane.common.db import db_now


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
    """Append one audit row. Secrets in `details` are redacted at any depth before storage
    (controlplane.audit.redaction).

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
