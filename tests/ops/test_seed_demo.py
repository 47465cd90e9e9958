"""seed_demo: idempotent, and it leaves work for the controllers."""

from __future__ import annotations

import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from controlplane.agents.models import Agent, AgentHealth
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command, CommandStatus
from controlplane.tenants.models import Tenant
from controlplane.tokens.models import BootstrapToken
from reconcilers.models import RunOutcome
from reconcilers.registry import controller_names
from reconcilers.services import run_controller

pytestmark = pytest.mark.django_db


def _counts() -> dict[str, int]:
    return {
        "tenants": Tenant.objects.count(),
        "agents": Agent.objects.count(),
        "jobs": Command.objects.count(),
        "tokens": BootstrapToken.objects.count(),
        "audit": AuditLog.objects.count(),
        "users": get_user_model().objects.count(),
    }


def test_seed_is_idempotent_and_creates_the_admin(tmp_path: Path, settings: Any) -> None:
    settings.DEBUG = True
    password_file = tmp_path / "admin-password"
    out = StringIO()
    call_command("seed_demo", admin_password_file=str(password_file), stdout=out)
    first = _counts()
    assert first["tenants"] == 4
    assert first["jobs"] >= 20
    assert "bootstrap token cpb_" in out.getvalue()
    password = password_file.read_text().strip()
    assert len(password) >= 12
    assert password_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password(password)

    again = StringIO()
    call_command("seed_demo", admin_password_file=str(password_file), stdout=again)
    assert _counts() == first
    assert "nothing created" in again.getvalue()
    assert password_file.read_text().strip() == password


def test_admin_creation_refused_without_debug(tmp_path: Path, settings: Any) -> None:
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("seed_demo", admin_password_file=str(tmp_path / "pw"), stdout=StringIO())
    assert not get_user_model().objects.filter(username="admin").exists()


def test_seeded_state_gives_the_controllers_work(redis_client: Any) -> None:
    call_command("seed_demo", stdout=StringIO())
    names = controller_names()
    if "agent-health" in names:
        assert run_controller("agent-health", force=True).outcome == RunOutcome.SUCCESS
        assert Agent.objects.get(name="demo-platform-silent").health == AgentHealth.OFFLINE
    if "job-recovery" in names:
        assert run_controller("job-recovery", force=True).items >= 1
        stuck = Command.objects.get(kind="demo-stuck-backup")
        assert stuck.status == CommandStatus.PENDING
    if "token-cleanup" in names:
        time.sleep(1.1)  # the seeded one-second token is past its expiry now
        assert run_controller("token-cleanup", force=True).items >= 1
    if "audit-retention" in names:
        assert run_controller("audit-retention", force=True).outcome == RunOutcome.SUCCESS
        assert not AuditLog.objects.filter(action="demo.seeded").exists()
