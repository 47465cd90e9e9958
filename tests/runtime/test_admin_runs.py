"""Run now from the admin goes through Celery (design.md §7): audited, sent with a task id that the
worker's run row keeps, never run in the web process; no worker answering a ping is said so, and
the in-process mode (runcontrollers installs, no broker) runs it here."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from controlplane.audit.models import AuditLog
from controlplane.celery import app as celery_app
from reconcilers.models import ReconcilerConfig, ReconcileRun, RunOutcome
from reconcilers.runtime.runner import worker_host
from reconcilers.services import config_update, run_request
from stress.procs import RedisServer
from tests.runtime.conftest import entry, subprocess_env
from tests.runtime.controllers import Sleeper, writes

pytestmark = pytest.mark.usefixtures("test_controllers")

CHANGELIST = "admin:reconcilers_reconcilerconfig_changelist"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A redis-server of this test alone as the Celery broker: no other process's worker
    can answer its pings or take its messages."""
    server = RedisServer(_free_port(), tmp_path / "broker")
    server.start()
    url = server.url()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) == 0:
                break
        time.sleep(0.05)
    monkeypatch.setattr(celery_app.conf, "broker_url", url)
    celery_app.close()  # drop pooled connections to the previous broker
    celery_app.amqp._producer_pool = None
    try:
        yield url
    finally:
        celery_app.close()
        celery_app.amqp._producer_pool = None
        server.stop()


@pytest.fixture
def staff(db: Any) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    return client


def _act(staff: Client, action: str) -> Any:
    pk = ReconcilerConfig.objects.get(controller=Sleeper.name).pk
    return staff.post(reverse(CHANGELIST), {"action": action, "_selected_action": [pk]}, follow=True)


def test_no_worker_answering_is_said_and_nothing_is_sent(staff: Client, private_broker: str) -> None:
    started = time.monotonic()
    outcome = run_request(Sleeper.name, actor="user:ops")
    elapsed = time.monotonic() - started
    assert (outcome.sent, outcome.summary) == (False, None)
    # The ping gives up after 1 s (the margin is for a loaded machine), not a request timeout.
    assert 1.0 <= elapsed < 1.0 + 3.0
    html = _act(staff, "run_now").content.decode()
    assert "no Celery worker answered a ping within 1 s: nothing was sent" in html
    assert not ReconcileRun.objects.filter(controller=Sleeper.name).exists()
    assert not AuditLog.objects.filter(action="reconciler.run.requested").exists()
    assert writes() == 0


def test_inprocess_mode_runs_here_and_audits(staff: Client, settings: Any) -> None:
    settings.RECONCILERS_ADMIN_RUNS = "inprocess"
    html = _act(staff, "dry_run_now").content.decode()
    assert f"{Sleeper.name}: dry run success" in html.lower()
    run = ReconcileRun.objects.get(controller=Sleeper.name)
    assert (run.dry_run, run.forced, run.task_id, run.worker_host) == (True, True, "", worker_host())
    audit = AuditLog.objects.get(action="reconciler.run.requested")
    assert audit.actor == "user:ops"
    assert audit.details["via"] == "inprocess"
    assert audit.details["dry_run"] is True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_run_now_returns_at_once_and_a_worker_writes_the_run(
    staff: Client, private_broker: str, settings: Any
) -> None:
    queue = f"cptest-{uuid.uuid4().hex[:8]}"
    settings.RECONCILERS_QUEUE = queue
    # The run holds for 3 s, so the overview can see it running before it finishes.
    config_update(Sleeper.name, {"params": {"hold_seconds": 3.0}}, actor="user:test")
    worker = entry(
        "celery",
        "worker",
        "-Q",
        queue,
        "--pool",
        "solo",
        "--loglevel",
        "INFO",
        "--hostname",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        env=subprocess_env(
            CELERY_BROKER_URL=private_broker, RECONCILERS_QUEUE=queue, WORKER_METRICS_PORT="0"
        ),
    )
    try:
        deadline = time.monotonic() + 60
        while not celery_app.control.ping(timeout=1.0):
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the worker never answered a ping"

        started = time.monotonic()
        response = _act(staff, "run_now")
        elapsed = time.monotonic() - started
        html = response.content.decode()
        assert "sent to a worker as task" in html, html[-3000:]
        assert elapsed < 3  # the web request does not wait for the 3 s run
        audit = AuditLog.objects.get(action="reconciler.run.requested")
        task_id = audit.details["task_id"]
        assert f"?q={task_id}" in html  # the message links the run history by task id
        assert not ReconcileRun.objects.filter(controller=Sleeper.name, outcome=RunOutcome.SUCCESS).exists()

        states = []
        while time.monotonic() < deadline:
            overview = staff.get(reverse("reconcilers-dashboard")).content.decode()
            row = overview.split(f'id="overview-{Sleeper.name}" data-state="', 1)[1]
            states.append(row.split('"', 1)[0])
            if states[-1] == "ok":
                break
            time.sleep(0.3)
        assert "running" in states
        assert states[-1] == "ok"

        run = ReconcileRun.objects.get(controller=Sleeper.name)
        assert run.outcome == RunOutcome.SUCCESS, run.error
        assert run.task_id == task_id
        assert run.forced is True
        assert run.worker_host
        assert run.worker_host != worker_host()  # a worker process, not this one
        assert run.worker_host.endswith(f":{worker.pid}")
        assert writes(Sleeper.name) == 1
        search = staff.get(reverse("admin:reconcilers_reconcilerun_changelist") + f"?q={task_id}")
        assert task_id in search.content.decode()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()


def test_run_request_refuses_an_unknown_controller(db: Any) -> None:
    from reconcilers.registry import UnknownControllerError

    with pytest.raises(UnknownControllerError):
        run_request("no-such-controller", actor="user:ops")
    assert not AuditLog.objects.exists()
    assert settings.RECONCILERS_ADMIN_RUNS == "celery"
