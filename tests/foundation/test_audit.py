"""Audit log: recursive redaction of secrets, append-only enforcement."""

from __future__ import annotations

import pytest

from controlplane.audit.models import AuditLog, AuditLogImmutableError
from controlplane.audit.redaction import REDACTED, redact_secrets
from controlplane.audit.services import audit_record


def test_redaction_at_any_depth_keeps_everything_else() -> None:
    details = {
        "user": "alice",
        "password": "hunter2",
        "nested": [
            {"api_key": "k1", "name": "n1", "deeper": {"Authorization": "Bearer x", "count": 3}},
            {"items": [{"client_secret": "s", "ok": True}]},
        ],
        "tokens": ["a", "b"],
        "refresh_token": {"value": "t"},
        "plain": [1, 2, {"note": "keep me"}],
    }
    assert redact_secrets(details) == {
        "user": "alice",
        "password": REDACTED,
        "nested": [
            {"api_key": REDACTED, "name": "n1", "deeper": {"Authorization": REDACTED, "count": 3}},
            {"items": [{"client_secret": REDACTED, "ok": True}]},
        ],
        "tokens": REDACTED,
        "refresh_token": REDACTED,
        "plain": [1, 2, {"note": "keep me"}],
    }
    assert details["password"] == "hunter2"  # the input is not mutated


@pytest.mark.django_db
def test_audit_record_stores_redacted_details() -> None:
    row = audit_record(
        actor="user:alice",
        action="token.revoked",
        resource_type="bootstrap_token",
        resource_id=7,
        details={"outer": [{"secret": "x", "id": 7}]},
    )
    stored = AuditLog.objects.get(pk=row.pk)
    assert stored.details == {"outer": [{"secret": REDACTED, "id": 7}]}
    assert stored.resource_id == "7"
    assert stored.created_at is not None


@pytest.mark.django_db
def test_audit_log_is_append_only() -> None:
    row = audit_record(actor="user:a", action="x", resource_type="y")
    with pytest.raises(AuditLogImmutableError):
        AuditLog.objects.filter(pk=row.pk).update(action="changed")
    with pytest.raises(AuditLogImmutableError):
        AuditLog.objects.filter(pk=row.pk).delete()
    with pytest.raises(AuditLogImmutableError):
        row.save()
    with pytest.raises(AuditLogImmutableError):
        row.delete()
    assert AuditLog.objects.retention_delete_id_range(row.pk, row.pk) == 1
    assert not AuditLog.objects.exists()
