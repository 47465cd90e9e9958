"""Raw bootstrap tokens and API keys appear only in the response to the POST that creates them:
never in a cookie the admin sets, never in django_session (both decoded here)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.http import HttpRequest
from django.test import Client
from django.urls import reverse

from controlplane.agents.models import Agent
from controlplane.common.secrets import hash_secret
from controlplane.tokens.models import BootstrapToken

SECRET = re.compile(r'id="secret-shown-once"[^>]*>([^<\s]+)<')


def decoded_cookies(client: Client) -> str:
    """Every cookie value the client holds, with the messages cookie decoded."""
    parts = []
    for name, morsel in client.cookies.items():
        parts.append(f"{name}={morsel.value}")
        if name == CookieStorage.cookie_name:
            storage = CookieStorage(HttpRequest())
            parts.append(repr(storage._decode(morsel.value)))
    return "\n".join(parts)


def decoded_sessions() -> str:
    return "\n".join(repr(session.get_decoded()) for session in Session.objects.all())


def follow_everything(client: Client) -> None:
    """Pages an operator would open next: any message queued for them is delivered now."""
    client.get(reverse("admin:index"))
    client.get(reverse("admin:tokens_bootstraptoken_changelist"))


@pytest.mark.django_db
@pytest.mark.parametrize("session_messages", [False, True])
def test_no_raw_token_or_key_in_cookies_or_sessions(settings: Any, session_messages: bool) -> None:
    if session_messages:
        settings.MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
    User.objects.create_superuser("root", "root@example.com", "pw-root-for-tests-1")
    client = Client()
    assert (
        client.post(
            reverse("admin:login"), {"username": "root", "password": "pw-root-for-tests-1"}
        ).status_code
        == 302
    )  # a real login: a django_session row exists

    token_page = client.post(
        reverse("admin:tokens_bootstraptoken_add"),
        {"description": "rack 9", "max_uses": 1, "valid_for_hours": 1},
    )
    agent_page = client.post(
        reverse("admin:agents_agent_add"),
        {"name": "edge-9", "is_platform_agent": "on", "capabilities": "[]", "max_concurrent_jobs": 1},
    )
    raws = []
    for page in (token_page, agent_page):
        assert page.status_code == 200, page.content[:500]
        match = SECRET.search(page.content.decode())
        assert match, page.content.decode()[:2000]
        raws.append(match.group(1))
        assert "no-store" in page["Cache-Control"]
        assert not any(raws[-1] in morsel.value for morsel in page.cookies.values())
    token_raw, key_raw = raws
    assert BootstrapToken.objects.get().token_hash == hash_secret(token_raw)
    assert Agent.objects.get(name="edge-9").api_key_hash == hash_secret(key_raw)

    # Before and after the pages that would deliver a queued message (delivery deletes it).
    before_delivery = decoded_cookies(client) + decoded_sessions()
    follow_everything(client)
    after_delivery = decoded_cookies(client) + decoded_sessions()
    assert Session.objects.exists()
    for raw in raws:
        assert raw not in before_delivery
        assert raw not in after_delivery
