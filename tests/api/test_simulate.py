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
        ["--base-url", "http://127.0.0.1:1"],  # neither a token nor --heartbeats-only
        ["--base-url", "http://127.0.0.1:1", "--heartbeats-only", "--agents", "20001"],
        ["--base-url", "http://example.com:80", "--heartbeats-only"],
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


@pytest.mark.django_db(transaction=True)
def test_simulate_heartbeats_only_keeps_a_fleet_online(live_server: Any) -> None:
    out = io.StringIO()
    argv = ["--base-url", live_server.url, "--heartbeats-only", "--agents", "40", "--duration", "5"]
    argv += ["--interval", "1", "--connections", "4", "--stale-timeout", "5", "--seed", "1", "--json"]
    call_command("simulate", *argv, stdout=out)
    summary = json.loads(out.getvalue())
    assert summary["held"] is True
    assert summary["failed_heartbeats"] == summary["late_agents"] == summary["offline_agents"] == 0
    fleet = Agent.objects.filter(name__startswith="sim-fleet-")
    assert fleet.count() == 40
    # Every agent beat at least twice: its first within the first second, the next a second
    # after each answer (5 s leaves room for a slow server).
    assert summary["heartbeats"] >= 80
    assert fleet.filter(health="online", version__gte=3).count() == 40


@pytest.mark.django_db(transaction=True)
def test_simulate_heartbeats_only_reports_a_fleet_that_does_not_hold(live_server: Any) -> None:
    # Fault injection: every key is refused (the fleet's agents are disabled once created).
    from controlplane.demo import fleet as fleet_module

    created = fleet_module.fleet_create

    def disabled_fleet(agents: int) -> tuple[list[int], list[str]]:
        ids, keys = created(agents)
        Agent.objects.filter(pk__in=ids).update(status="disabled")
        return ids, keys

    argv = ["--base-url", live_server.url, "--heartbeats-only", "--agents", "5", "--duration", "2"]
    argv += ["--interval", "1", "--json"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fleet_module, "fleet_create", disabled_fleet)
        with pytest.raises(CommandError, match="did not hold"):
            call_command("simulate", *argv, stdout=io.StringIO())
