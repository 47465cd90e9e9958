"""Celery tasks: stable names per controller, routing, and the summary they return."""

from __future__ import annotations

import pytest
from django.conf import settings

from controlplane.celery import app
from reconcilers.schedule import task_name
from reconcilers.tasks import tasks_register
from tests.runtime.controllers import Sleeper, writes

pytestmark = pytest.mark.usefixtures("test_controllers")


def test_task_names_are_stable_strings() -> None:
    assert task_name("agent-health") == "reconcilers.agent_health"
    assert task_name("audit-retention") == "reconcilers.audit_retention"
    tasks = tasks_register()
    assert tasks[Sleeper.name].name == "reconcilers.test_sleeper"
    assert "reconcilers.test_sleeper" in app.tasks


def test_task_runs_through_the_runner_and_returns_the_summary() -> None:
    task = tasks_register()[Sleeper.name]
    result = task.apply(kwargs={"force": True}).get()
    assert result["controller"] == Sleeper.name
    assert result["outcome"] == "success"
    assert result["steps"] == {"written": 1}
    assert isinstance(result["run_id"], int)
    assert writes(Sleeper.name) == 1


def test_reconciler_tasks_route_to_their_queue() -> None:
    route = app.amqp.router.route({}, "reconcilers.test_sleeper", args=(), kwargs={})
    assert route["queue"].name == settings.RECONCILERS_QUEUE
    other = app.amqp.router.route({}, "someone.else", args=(), kwargs={})
    assert other["queue"].name != settings.RECONCILERS_QUEUE
