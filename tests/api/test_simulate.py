"""Smoke test of `manage.py simulate` against a live server thread: a short, small fleet."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from controlplane.agents.models import Agent
from controlplane.commands.models import Command, CommandStatus


@pytest.mark.django_db(transaction=True)
def test_simulate_drives_a_small_fleet_to_completed_jobs(live_server: Any) -> None:
    out = io.StringIO()
    call_command(
        "simulate",
        "--base-url",
        live_server.url,
        "--issue-token",
        "--agents",
        "3",
        "--duration",
        "3",
        "--rate",
        "6",
        "--job-seconds",
        "0.1",
        "--crash-fraction",
        "0",
        "--silent-fraction",
        "0",
        "--fail-fraction",
        "0.2",
        "--seed",
        "1",
        "--json",
        stdout=out,
    )
    summary = json.loads(out.getvalue())
    assert summary["agents_registered"] == 3
    assert Agent.objects.filter(is_platform_agent=True, name__startswith="sim-agent-").count() == 3
    assert summary["client"]["enqueued"] >= 10
    assert summary["completed"] + summary["failed"] >= 5
    assert summary["completed"] == Command.objects.filter(status=CommandStatus.COMPLETED).count()
    # The run stops cleanly: agents finish the job in hand, nothing is left held.
    assert summary["in_flight"] == 0
    assert summary["jobs_total"] == Command.objects.count()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "argv",
    [
        ["--base-url", "http://example.com", "--token", "x"],
        ["--base-url", "http://127.0.0.1:1", "--token", "x", "--agents", "0"],
        [
            "--base-url",
            "http://127.0.0.1:1",
            "--token",
            "x",
            "--crash-fraction",
            "0.8",
            "--silent-fraction",
            "0.5",
        ],
    ],
)
def test_simulate_bad_args_exit_2(argv: list[str]) -> None:
    with pytest.raises(CommandError) as excinfo:
        call_command("simulate", *argv)
    assert excinfo.value.returncode == 2
