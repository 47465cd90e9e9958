"""End to end: gunicorn + Celery worker + beat + the simulator, about a minute, on its own database,
once with Redis as the broker and once with RabbitMQ (on a vhost the test creates and deletes).
The Redis run's processes reach PostgreSQL through a real PgBouncer in transaction pooling
(`DATABASE_POOL=pgbouncer`), the production topology of several hosts; the database is
created, migrated and dropped directly.

50 agents with 10% crashing mid-job and 10% going silent for longer than the recovery
bound. While it runs, a monitor samples the database twice a second and checks the
loop's promises; at the end every job must be terminal or pending.

Bound: a holder's last heartbeat is at most `stale_timeout` old before agent-health may
mark it offline, agent-health runs every INTERVAL, and job-recovery requeues the job at
its next run, INTERVAL later: so no job may still be held by an agent whose last
heartbeat is older than stale_timeout + 2 x INTERVAL (+ SLACK for task latency).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.conf import settings

from tests.pgbouncer import PgBouncer

pytestmark = [pytest.mark.slow, pytest.mark.postgres_only]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
E2E_DATABASE = "cp_api_e2e"
PORT = 16401  # helper C's private range
HEARTBEAT_SECONDS = 2
STALE_TIMEOUT_SECONDS = 6
INTERVAL_SECONDS = 3  # agent-health and job-recovery
SLACK_SECONDS = 4  # beat tick alignment plus task pickup latency
HOLD_BOUND_SECONDS = STALE_TIMEOUT_SECONDS + 2 * INTERVAL_SECONDS + SLACK_SECONDS
SIM_SECONDS = 45
AGENTS = 50
RABBITMQ_USER = RABBITMQ_PASSWORD = "guest"  # RabbitMQ's default user, loopback only


def _database_url(name: str) -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


def _admin_connection() -> psycopg.Connection[Any]:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        dbname="postgres",
        user=db["USER"],
        password=db.get("PASSWORD") or None,
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        autocommit=True,
    )


@dataclass
class Processes:
    env: dict[str, str]
    logs: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 120) -> str:
        result = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, name: str, *argv: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.running.append(
            subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


@dataclass
class Broker:
    name: str
    url: str
    vhost: str = ""

    def queues(self) -> dict[str, int]:
        """RabbitMQ only: queue name -> consumers, in this broker's vhost."""
        lines = _rabbitmqctl("list_queues", "-p", self.vhost, "--no-table-headers", "name", "consumers")
        return {name: int(consumers) for name, consumers in (line.split() for line in lines.splitlines())}


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The test run's own Redis database, or a fresh RabbitMQ vhost (guest, loopback)."""
    if request.param == "redis":
        yield Broker("redis", settings.REDIS_URL)
        return
    vhost = f"cpe2e-{os.getpid()}"
    if vhost in _rabbitmqctl("list_vhosts").split():  # left over by a killed run
        _rabbitmqctl("delete_vhost", vhost)
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, RABBITMQ_USER, ".*", ".*", ".*")
        yield Broker("rabbitmq", f"amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@127.0.0.1:5672/{vhost}", vhost)
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def stack(tmp_path: Path, broker: Broker, request: pytest.FixtureRequest) -> Iterator[Processes]:
    with _admin_connection() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {E2E_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {E2E_DATABASE}")
    pooled: dict[str, str] = {}
    if broker.name == "redis":
        bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
        pooled = {
            "DATABASE_URL": f"postgres://{settings.DATABASES['default']['USER']}@{bouncer.host}:{bouncer.port}/"
            f"{E2E_DATABASE}",
            "DATABASE_POOL": "pgbouncer",
        }
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": _database_url(E2E_DATABASE),
        "REDIS_URL": settings.REDIS_URL,  # the test run's own Redis database
        "CELERY_BROKER_URL": broker.url,
        "RECONCILERS_QUEUE": f"cpe2e-{os.getpid()}",
        "RECONCILERS_LOCK_PREFIX": f"cpe2e:{os.getpid()}:lock:",
        "AGENT_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_SECONDS),
        "WORKER_METRICS_PORT": "0",
        "PROMETHEUS_MULTIPROC_DIR": "",
        # The whole simulated fleet registers from 127.0.0.1: one address, like agents behind one
        # NAT, which the per-address limits would rightly stop after their burst.
        "API_REGISTER_BURST": str(AGENTS * 10),
        "API_UNAUTHORIZED_BURST": str(AGENTS * 10),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    processes = Processes(env=env, logs=tmp_path)
    python = str(BIN / "python")
    processes.run(python, "manage.py", "migrate", "-v0")  # directly, never through the pooler
    processes.env.update(pooled)
    health = {
        "interval_seconds": INTERVAL_SECONDS,
        "run_timeout_seconds": INTERVAL_SECONDS,
        # The brake is off: at the end the whole fleet stops heartbeating at once, on purpose.
        "params": {"stale_timeout_seconds": STALE_TIMEOUT_SECONDS, "max_offline_fraction": 1.0},
    }
    recovery = {"interval_seconds": INTERVAL_SECONDS, "run_timeout_seconds": INTERVAL_SECONDS}
    processes.run(
        python,
        "manage.py",
        "shell",
        "-c",
        "from reconcilers.services import config_update\n"
        f"config_update('agent-health', {health!r}, actor='user:e2e')\n"
        f"config_update('job-recovery', {recovery!r}, actor='user:e2e')\n",
    )
    try:
        processes.start(
            "web",
            str(BIN / "gunicorn"),
            "controlplane.wsgi",
            "-b",
            f"127.0.0.1:{PORT}",
            "-w",
            "2",
            "--threads",
            "16",
        )
        processes.start(
            "worker",
            str(BIN / "celery"),
            "-A",
            "controlplane",
            "worker",
            "-Q",
            env["RECONCILERS_QUEUE"],
            "-c",
            "2",
            "-n",
            f"e2e-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        )
        processes.start(
            "beat",
            str(BIN / "celery"),
            "-A",
            "controlplane",
            "beat",
            "-l",
            "INFO",
            "-s",
            str(tmp_path / "beat"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/api/schema/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the web server did not come up")
        yield processes
    finally:
        processes.stop_all()
        with _admin_connection() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {E2E_DATABASE} WITH (FORCE)")


ACTIVE_SQL = """
    SELECT c.id, c.agent_id, c.dispatch_attempts, a.max_concurrent_jobs,
           EXTRACT(EPOCH FROM clock_timestamp() - a.last_seen_at)
      FROM commands_command c LEFT JOIN agents_agent a ON a.id = c.agent_id
     WHERE c.status IN ('acknowledged', 'running')
"""


class Monitor(threading.Thread):
    """Samples the held jobs and records every broken promise."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.violations: list[str] = []
        self.holder_of_attempt: dict[tuple[int, int], int] = {}
        self.samples = 0

    def run(self) -> None:
        with psycopg.connect(_database_url(E2E_DATABASE), autocommit=True) as conn:
            while not self.stop.wait(0.5):
                self.check(conn.execute(ACTIVE_SQL).fetchall())

    def check(self, rows: list[tuple[Any, ...]]) -> None:
        self.samples += 1
        held: dict[int, int] = {}
        for job_id, agent_id, attempt, max_jobs, silent_for in rows:
            if agent_id is None or attempt < 1:
                self.violations.append(f"job {job_id} active without holder/attempt")
                continue
            # Two live attempts = the same claim number handed to two agents.
            first = self.holder_of_attempt.setdefault((job_id, attempt), agent_id)
            if first != agent_id:
                self.violations.append(f"job {job_id} attempt {attempt} held by {first} and {agent_id}")
            held[agent_id] = held.get(agent_id, 0) + 1
            if held[agent_id] > max_jobs:
                self.violations.append(f"agent {agent_id} holds more than {max_jobs} jobs")
            if silent_for is not None and float(silent_for) > HOLD_BOUND_SECONDS:
                self.violations.append(
                    f"job {job_id} still held by agent {agent_id} silent for {silent_for:.1f}s"
                )


def test_fleet_end_to_end_heals_crashes_and_fences_stale_holders(stack: Processes, broker: Broker) -> None:
    if broker.name == "rabbitmq":
        # The worker consumes the reconcile queue in the test's vhost, so every run below
        # reached it through RabbitMQ.
        queue = stack.env["RECONCILERS_QUEUE"]
        deadline = time.monotonic() + 30
        while broker.queues().get(queue, 0) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        assert broker.queues().get(queue, 0) >= 1, broker.queues()
    monitor = Monitor()
    monitor.start()
    try:
        output = stack.run(
            str(BIN / "python"),
            "manage.py",
            "simulate",
            "--base-url",
            f"http://127.0.0.1:{PORT}",
            "--issue-token",
            "--agents",
            str(AGENTS),
            "--duration",
            str(SIM_SECONDS),
            "--rate",
            "12",
            "--job-seconds",
            "1",
            "--crash-fraction",
            "0.1",
            "--silent-fraction",
            "0.1",
            "--silence-seconds",
            str(HOLD_BOUND_SECONDS + 3),
            "--seed",
            "5",
            "--json",
            timeout=SIM_SECONDS + 60,
        )
        # Crashed agents' jobs are still held now; recovery must free them within the bound.
        deadline = time.monotonic() + HOLD_BOUND_SECONDS + 5
        with psycopg.connect(_database_url(E2E_DATABASE), autocommit=True) as conn:
            while time.monotonic() < deadline and conn.execute(ACTIVE_SQL).fetchall():
                time.sleep(0.5)
            statuses = dict(
                conn.execute("SELECT status, count(*) FROM commands_command GROUP BY status").fetchall()
            )
            requeued = conn.execute(
                "SELECT count(*) FROM commands_command WHERE status_reason IN ('holder_offline', 'stuck')"
            ).fetchone()[0]
    finally:
        monitor.stop.set()
        monitor.join()
    summary = json.loads(output.strip().splitlines()[-1])
    print(
        json.dumps(summary, indent=1), statuses, f"requeued: {requeued}, monitor samples: {monitor.samples}"
    )
    assert monitor.samples > SIM_SECONDS  # the monitor really watched the run
    assert monitor.violations == []
    assert set(statuses) <= {"pending", "completed", "failed", "canceled", "expired"}, statuses
    assert summary["agents_registered"] == AGENTS
    assert summary["client"]["crashed"] >= 1
    assert requeued >= summary["client"]["crashed"]  # every crash left a job that was requeued
    assert summary["client"].get("stale_reports_refused", 0) >= 1  # a silent holder came back too late
    assert summary["completed"] > 100
