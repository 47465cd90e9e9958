"""The example agent client in docs/examples: uses only what the schema declares, and works end to end
against a live server. The API docs page: staff only, Swagger UI from local static files."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.test import Client

from controlplane.commands.models import CommandStatus
from controlplane.commands.services import command_enqueue
from controlplane.tenants.models import Tenant
from controlplane.tokens.services import token_issue

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agent_client.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_client_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_example_uses_only_operations_the_schema_declares(client: Client) -> None:
    schema = client.get("/api/schema/").json()
    for method, path in _example().OPERATIONS:
        assert method in schema["paths"].get(path, {}), f"{method.upper()} {path} is not in the schema"
    source = EXAMPLE.read_text()
    for _method, path in _example().OPERATIONS:
        assert path.split("{")[0] in source


@pytest.mark.django_db(transaction=True)
def test_the_example_agent_registers_claims_and_completes_a_job(live_server: Any, capsys: Any) -> None:
    tenant = Tenant.objects.create(name="example-tenant", plan="team")
    job = command_enqueue(tenant, "example.kind", {"n": 1}, is_platform_job=True)
    issued = token_issue(description="example", ttl=timedelta(minutes=5), max_uses=1, actor="user:test")
    assert _example().main(["--base-url", live_server.url, "--token", issued.raw]) == 0
    out = capsys.readouterr().out
    assert "registered agent" in out
    assert f"'job_id': {job.pk}" in out
    job.refresh_from_db()
    assert job.status == CommandStatus.COMPLETED


@pytest.mark.django_db
def test_api_docs_are_for_staff_from_local_static_files(client: Client) -> None:
    anonymous = client.get("/api/docs/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    client.force_login(User.objects.create_user("not-staff", password="pw-not-staff-1"))
    assert client.get("/api/docs/").status_code == 302

    client.force_login(User.objects.create_user("staff", password="pw-staff-1", is_staff=True))
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html
    assert "/api/schema/" in html
    assert "cdn" not in html.lower()
    assert "https://" not in html
    for name in ("ninja/swagger-ui-bundle.js", "ninja/swagger-ui.css", "ninja/swagger-ui-init.js"):
        assert finders.find(name), f"{name} is not among the static files the project ships"
