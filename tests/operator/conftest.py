"""Staff users for the operator tests: one with the change permissions, one that may only look."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

MODELS = ("agent", "agentlease", "command", "bootstraptoken")


def _staff(username: str, codenames: list[str]) -> User:
    user = User.objects.create_user(username=username, password="pw-for-tests-only", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator(db: Any) -> User:
    return _staff(
        "oncall",
        [f"{verb}_{model}" for model in MODELS for verb in ("view", "change")] + ["add_bootstraptoken"],
    )


@pytest.fixture
def operator_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(db: Any) -> Client:
    client = Client()
    client.force_login(_staff("readonly", [f"view_{model}" for model in MODELS]))
    return client


@pytest.fixture
def run_action() -> Callable[..., Any]:
    """POST an admin changelist action for the given primary keys; returns the followed response."""

    def run(client: Client, model: str, action: str, pks: list[int]) -> Any:
        app = {"agent": "agents", "command": "commands", "bootstraptoken": "tokens"}[model]
        return client.post(
            reverse(f"admin:{app}_{model}_changelist"),
            {"action": action, "_selected_action": [str(pk) for pk in pks]},
            follow=True,
        )

    return run


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def loaded_version_of(response: Any) -> int:
    """The hidden version the change form carries (what the browser would post back)."""
    match = re.search(rb'name="loaded_version" value="(\d+)"', response.content)
    assert match, "change form carries no loaded_version"
    return int(match.group(1))
