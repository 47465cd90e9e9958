"""Scenario 1, exactly once: Celery workers and two independent beats on 1-2 s intervals.

Two workers x concurrency 2 (four prefork processes) and two `celery beat` processes with
the DatabaseScheduler run all five controllers against their own database and a private
redis-server (broker and lock store), while a producer thread keeps creating work (jobs,
stale agents, held jobs whose holder dies, short-lived tokens, backdated audit rows) and
a racer fires forced CLI runs. Then, per controller, from ReconcileRun and the write
audit: no overlapping successful runs, no two successful starts within half an interval
(except forced), fences increase, every controller write passed a fence check that no
newer grant preceded, no error outcome, and each controller did real work.

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import close_old_connections, connection
from django.db.models import F
from django.test import override_settings

from controlplane.agents.models import Agent, AgentHealth
from controlplane.agents.services import agent_create, agent_heartbeat
from controlplane.audit.models import AuditLog
from controlplane.commands.services import command_claim, command_enqueue_many
from controlplane.common.db import db_now
from controlplane.tenants.models import Plan, Tenant
from controlplane.tokens.services import token_issue
from reconcilers.models import RunOutcome
from stress import checks, db
from stress.base import (
    ACTOR,
    HEARTBEAT_INTERVAL_SECONDS,
    Report,
    StressEnv,
    configure,
    data_reset,
    first_traceback,
    traceback_count,
)
from stress.procs import REPO_ROOT, ProcessSet, RedisServer

INTERVALS = {
    "agent-health": 1,
    "job-recovery": 2,
    "queue-priority": 1,
    "token-cleanup": 2,
    "audit-retention": 2,
}
PARAMS: dict[str, dict[str, Any]] = {
    "agent-health": {"stale_timeout_seconds": 3, "max_offline_fraction": 1.0},
    "token-cleanup": {"grace_days": 0},
    "audit-retention": {"retention_days": 30, "batch_size": 50},
}
AGENTS = 40
PRODUCER_TICK_SECONDS = 0.5
LIVENESS_FRACTION = 0.25  # each controller must have at least this share of its due runs succeed
DRAIN_SECONDS = 3.0  # after the beats stop, let queued messages run (they expire after one interval)


class Producer(threading.Thread):
    """Keeps every controller busy: each tick enqueues jobs (some with short deadlines),
    lets agents claim, silences one agent, heartbeats others, issues a 2-s token and
    writes backdated audit rows."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(name="stress-producer", daemon=True)
        self.stop_event = stop
        self.counts: dict[str, int] = dict.fromkeys(
            ("jobs", "claims", "silenced", "heartbeats", "tokens", "old_audit_rows", "errors"), 0
        )
        self.rng = random.Random(1)

    def run(self) -> None:
        try:
            while not self.stop_event.wait(PRODUCER_TICK_SECONDS):
                try:
                    self.tick()
                except Exception as exc:  # a producer hiccup must not end the scenario
                    self.counts["errors"] += 1
                    print(f"producer error: {exc!r}", file=sys.stderr)
                    close_old_connections()
        finally:
            connection.close()

    def tick(self) -> None:
        rng = self.rng
        tenants = list(Tenant.objects.all())
        now = db_now()
        tenant = rng.choice(tenants)
        expires = [None, None, now + timedelta(seconds=rng.uniform(1, 3))]
        for expires_at in expires:
            command_enqueue_many(
                tenant, "stress", [{"n": rng.random()}], is_platform_job=True, expires_at=expires_at
            )
            self.counts["jobs"] += 1
        agent_ids = list(Agent.objects.values_list("pk", flat=True))
        for agent_id in rng.sample(agent_ids, 5):
            agent_heartbeat(agent_id)
            self.counts["heartbeats"] += 1
        online = list(Agent.objects.filter(health=AgentHealth.ONLINE).values_list("pk", flat=True))
        if online:
            if command_claim(rng.choice(online)) is not None:
                self.counts["claims"] += 1
            silenced = rng.choice(online)
            Agent.objects.filter(pk=silenced).update(
                last_seen_at=now - timedelta(hours=1), version=F("version") + 1
            )
            self.counts["silenced"] += 1
        token_issue(description="stress", ttl=timedelta(seconds=2), max_uses=1, actor=ACTOR)
        self.counts["tokens"] += 1
        old = now - timedelta(days=400)
        AuditLog.objects.bulk_create(
            AuditLog(created_at=old, actor=ACTOR, action="stress.old", resource_type="stress", resource_id=i)
            for i in range(20)
        )
        self.counts["old_audit_rows"] += 20


class ForcedRacer(threading.Thread):
    """Fires `manage.py reconcile <name> --force --json` at random moments: a manual trigger
    racing the beats' ticks (forced runs bypass too_soon, never the lock)."""

    def __init__(self, stop: threading.Event, env: dict[str, str], every_seconds: float) -> None:
        super().__init__(name="stress-forced-racer", daemon=True)
        self.stop_event = stop
        self.env = env
        self.every = every_seconds
        self.outcomes: list[str] = []
        self.bad_exits: list[str] = []
        self.rng = random.Random(2)

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.every):
            name = self.rng.choice(list(INTERVALS))
            done = subprocess.run(
                [sys.executable, "manage.py", "reconcile", name, "--force", "--json"],
                cwd=REPO_ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            try:
                summary = json.loads(done.stdout)
                self.outcomes.append(f"{summary['outcome']}:{summary['reason'] or ''}")
            except ValueError:
                self.bad_exits.append(f"{name}: exit {done.returncode}, stdout {done.stdout[:200]!r}")
                continue
            if done.returncode != 0 or traceback_count(done.stderr):
                self.bad_exits.append(f"{name}: exit {done.returncode}: {done.stderr[-500:]}")


def seed_data() -> None:
    for plan in (Plan.FREE, Plan.TEAM, Plan.BUSINESS, Plan.ENTERPRISE):
        Tenant.objects.create(name=f"stress-{plan}", plan=plan)
    for i in range(AGENTS):
        created = agent_create(name=f"stress-agent-{i}", tenant=None, actor=ACTOR)
        agent_heartbeat(created.agent.pk)


def run(
    env: StressEnv,
    *,
    duration: float = 60.0,
    workers: int = 2,
    concurrency: int = 2,
    forced_every: float = 10.0,
) -> Report:
    report = Report("exactly once: 4 worker processes, 2 beats, 1-2 s intervals")
    redis_server = RedisServer(env.redis_port, env.log_dir / "exactly_once")
    procs = ProcessSet(env.log_dir / "exactly_once", env.subprocess_env())
    stop = threading.Event()
    producer = Producer(stop)
    racer = ForcedRacer(stop, env.subprocess_env(app=f"{db.WORKER_APP_PREFIX}-cli"), forced_every)
    with override_settings(AGENT_HEARTBEAT_INTERVAL_SECONDS=HEARTBEAT_INTERVAL_SECONDS):
        data_reset()
        configure(
            {
                name: {
                    "interval_seconds": interval,
                    "run_timeout_seconds": interval,  # a run may not outlast its period
                    **({"params": PARAMS[name]} if name in PARAMS else {}),
                }
                for name, interval in INTERVALS.items()
            }
        )
        seed_data()
    db.write_audit_install()
    started = time.monotonic()
    since = db_now()
    try:
        redis_server.start()
        for i in range(workers):
            procs.celery_worker(f"worker{i + 1}", concurrency=concurrency, queue="reconcilers")
        for i in range(2):
            procs.celery_beat(f"beat{i + 1}")
        producer.start()
        if forced_every > 0:
            racer.start()
        deadline = started + duration
        while time.monotonic() < deadline:
            time.sleep(1.0)
            dead = [p.label for p in procs.procs if not p.alive()]
            if dead:
                report.violations.append(f"processes died during the run: {dead}")
                break
        for proc in procs.procs:
            if proc.label.startswith("beat"):
                proc.stop()
        stop.set()
        time.sleep(DRAIN_SECONDS)
    finally:
        stop.set()
        codes = procs.stop_all()
        producer.join(timeout=30)
        racer.join(timeout=150)
        redis_server.stop()
    elapsed = time.monotonic() - started
    try:
        _evaluate(report, procs, since, elapsed, producer, racer, codes)
    finally:
        db.write_audit_uninstall()
    return report


def _evaluate(
    report: Report,
    procs: ProcessSet,
    since: Any,
    elapsed: float,
    producer: Producer,
    racer: ForcedRacer,
    codes: dict[str, int | None],
) -> None:
    runs = checks.runs_load(since, INTERVALS)
    overlaps = checks.overlaps(runs)
    too_close = checks.too_close_starts(runs, INTERVALS, 0.5)
    regressions = checks.fence_regressions(runs)
    audit = db.fence_audit_read()
    successes = {name: sum(1 for r in runs if r.controller == name and r.real_success) for name in INTERVALS}
    forced = sum(1 for r in runs if r.real_success and r.forced)
    items: dict[str, int] = {}
    from reconcilers.models import ReconcileRun

    for name in INTERVALS:
        items[name] = sum(
            ReconcileRun.objects.filter(
                controller=name, started_at__gte=since, outcome=RunOutcome.SUCCESS
            ).values_list("items", flat=True)
        )
    errors = [r for r in runs if r.outcome == RunOutcome.ERROR]
    skipped: dict[str, int] = {}
    for r in runs:
        if r.outcome == RunOutcome.SKIPPED:
            skipped[r.reason] = skipped.get(r.reason, 0) + 1
    logs = {p.label: p.log_text() for p in procs.procs}
    tracebacks = {label: traceback_count(text) for label, text in logs.items()}
    report.figures.update(
        {
            "duration_s": round(elapsed, 1),
            "processes": f"{sum(1 for p in procs.procs if p.label.startswith('worker'))} workers "
            f"(prefork), {sum(1 for p in procs.procs if p.label.startswith('beat'))} beats, "
            "1 private redis-server",
            "intervals_s": INTERVALS,
            "successful_runs": successes,
            "forced_successful_runs": forced,
            "items_per_controller": items,
            "skipped_by_reason": dict(sorted(skipped.items())),
            "errors": len(errors),
            "overlaps": len(overlaps),
            "too_close_starts": len(too_close),
            "fence_regressions": len(regressions),
            "fence_grants": audit.grants,
            "controller_write_transactions": audit.write_transactions,
            "controller_rows_written": audit.rows_written,
            "unfenced_write_transactions": len(audit.unfenced_transactions),
            "stale_fence_commits": len(audit.stale_commits),
            "forced_cli_runs": dict(sorted(_count(racer.outcomes).items())),
            "producer": producer.counts,
            "tracebacks_in_logs": sum(tracebacks.values()),
            "exit_codes": codes,
        }
    )
    report.violations += [f"overlap: {checks.describe_pair(p)}" for p in overlaps[:10]]
    report.violations += [f"too close: {checks.describe_pair(p)}" for p in too_close[:10]]
    report.violations += regressions[:10]
    report.violations += [
        f"unfenced controller write in transaction {t}" for t in audit.unfenced_transactions[:10]
    ]
    report.violations += [
        f"{c}: write committed with fence {f} after grant {g}" for c, f, g in audit.stale_commits[:10]
    ]
    report.violations += [
        f"error run {r.controller} {r.reason} at {r.started_at.isoformat()} ({r.worker_host})"
        for r in errors[:10]
    ]
    report.violations += [f"forced CLI run: {b}" for b in racer.bad_exits[:10]]
    if any(tracebacks.values()):
        label = next(label for label, count in tracebacks.items() if count)
        first = first_traceback(logs[label])
        report.violations.append(f"tracebacks in process logs: {tracebacks}; the first, in {label}:\n{first}")
    report.check(
        all(code == 0 for code in codes.values()),
        f"not every process exited 0 on SIGTERM (a hung one is SIGKILLed): {codes}",
    )
    report.check(producer.counts["errors"] == 0, f"producer errors: {producer.counts['errors']}")
    for name, interval in INTERVALS.items():
        due = elapsed / interval
        report.check(
            successes[name] >= max(1, int(LIVENESS_FRACTION * due)),
            f"{name}: only {successes[name]} successful runs of ~{due:.0f} due (liveness)",
        )
        report.check(items[name] > 0, f"{name}: changed nothing in the whole run (the work never reached it)")
    report.check(audit.write_transactions > 0, "the write audit saw no controller write (instrument broken)")


def _count(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out
