"""The database itself rejects bad status values (CHECK constraints mirror the TextChoices)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, transaction

from controlplane.agents.models import Agent
from controlplane.commands.models import Command
from controlplane.tenants.models import Tenant
from controlplane.tokens.models import BootstrapToken
from reconcilers.models import ReconcileRun

pytestmark = pytest.mark.django_db


def _rejects(model: type, pk: int, **values: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.filter(pk=pk).update(**values)


def test_tenant_plan_checked(make_tenant: Callable[..., Tenant]) -> None:
    _rejects(Tenant, make_tenant().pk, plan="platinum")


def test_agent_status_and_health_checked(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    _rejects(Agent, agent.pk, status="sleeping")
    _rejects(Agent, agent.pk, health="zombie")


def test_command_status_and_reason_checked(make_command: Callable[..., Command]) -> None:
    command = make_command()
    _rejects(Command, command.pk, status="lost")
    _rejects(Command, command.pk, status_reason="whatever")


def test_token_status_checked(now: Any) -> None:
    token = BootstrapToken.objects.create(token_hash="a" * 64, token_prefix="aaaaaaaa", expires_at=now)
    _rejects(BootstrapToken, token.pk, status="borrowed")
    _rejects(BootstrapToken, token.pk, current_uses=2, max_uses=1)


def test_run_outcome_and_reason_checked(now: Any) -> None:
    run = ReconcileRun.objects.create(controller="x", started_at=now, outcome="success")
    _rejects(ReconcileRun, run.pk, outcome="meh")
    _rejects(ReconcileRun, run.pk, reason="because")


def test_valid_values_accepted(make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    Agent.objects.filter(pk=agent.pk).update(status="disabled", health="error")
    agent.refresh_from_db()
    assert (agent.status, agent.health) == ("disabled", "error")
