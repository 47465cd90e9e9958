"""Issuing and revoking bootstrap tokens in the admin: audited and permission-checked."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from controlplane.audit.models import AuditLog
from controlplane.common.secrets import hash_secret
from controlplane.tokens.models import BootstrapToken, TokenStatus
from controlplane.tokens.services import token_issue
from tests.operator.conftest import messages_of

pytestmark = pytest.mark.django_db


def _issue(description: str = "ci runners") -> BootstrapToken:
    return token_issue(description=description, ttl=timedelta(hours=1), max_uses=3, actor="user:setup").token


def test_issue_form_shows_raw_token_once_and_stores_only_its_hash(operator_client: Client) -> None:
    response = operator_client.post(
        reverse("admin:tokens_bootstraptoken_add"),
        {"description": "rack 7", "max_uses": 5, "valid_for_hours": 2},
        follow=True,
    )

    # The secret is in the response to the POST itself (not a redirect, not a message).
    assert response.status_code == 200
    assert not response.redirect_chain
    assert "no-store" in response["Cache-Control"]
    match = re.search(r'id="secret-shown-once"[^>]*>(cpb_[^<\s]+)<', response.content.decode())
    assert match
    raw = match.group(1)
    assert not [m for m in messages_of(response) if raw in m]
    token = BootstrapToken.objects.get()
    assert token.token_hash == hash_secret(raw)
    assert raw not in {token.token_hash, token.token_prefix, token.description}
    assert (token.max_uses, token.status, token.created_by.username if token.created_by else None) == (
        5,
        TokenStatus.ACTIVE,
        "oncall",
    )
    audit = AuditLog.objects.get(action="token.issued")
    assert (audit.actor, audit.resource_id) == ("user:oncall", str(token.pk))
    # The change page afterwards never shows the secret again.
    page = operator_client.get(reverse("admin:tokens_bootstraptoken_change", args=[token.pk]))
    assert raw not in page.content.decode()


def test_issue_refused_without_add_permission(viewer_client: Client) -> None:
    response = viewer_client.post(
        reverse("admin:tokens_bootstraptoken_add"), {"description": "x", "max_uses": 1, "valid_for_hours": 1}
    )
    assert response.status_code == 403
    assert not BootstrapToken.objects.exists()
    assert not AuditLog.objects.exists()


def test_revoke_action_revokes_audits_and_skips_revoked(
    operator_client: Client, run_action: Callable[..., Any]
) -> None:
    active, already = _issue(), _issue()
    already.status = TokenStatus.REVOKED
    already.save(update_fields=["status"])

    response = run_action(operator_client, "bootstraptoken", "revoke_selected", [active.pk, already.pk])

    assert any("Revoked 1 bootstrap tokens; skipped 1 (already done: 1" in m for m in messages_of(response))
    active.refresh_from_db()
    assert active.status == TokenStatus.REVOKED
    assert active.revoked_at is not None
    audit = AuditLog.objects.get(action="token.revoked")
    assert (audit.actor, audit.resource_id) == ("user:oncall", str(active.pk))


def test_revoke_refused_without_change_permission(
    viewer_client: Client, run_action: Callable[..., Any]
) -> None:
    token = _issue()
    listing = viewer_client.get(reverse("admin:tokens_bootstraptoken_changelist"))
    assert "revoke_selected" not in listing.content.decode()

    run_action(viewer_client, "bootstraptoken", "revoke_selected", [token.pk])

    token.refresh_from_db()
    assert (token.status, token.revoked_at) == (TokenStatus.ACTIVE, None)
    assert not AuditLog.objects.filter(action="token.revoked").exists()


def test_description_edit_writes_only_description_and_is_audited(operator_client: Client) -> None:
    token = _issue("old")
    # A registration lands after the form was loaded: the save must not rewind it.
    operator_client.get(reverse("admin:tokens_bootstraptoken_change", args=[token.pk]))
    BootstrapToken.objects.filter(pk=token.pk).update(current_uses=2)

    response = operator_client.post(
        reverse("admin:tokens_bootstraptoken_change", args=[token.pk]), {"description": "new"}
    )

    assert response.status_code == 302
    token.refresh_from_db()
    assert (token.description, token.current_uses, token.max_uses) == ("new", 2, 3)
    audit = AuditLog.objects.get(action="token.updated")
    assert audit.actor == "user:oncall"
