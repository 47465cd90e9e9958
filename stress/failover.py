"""Scenario 5, a Redis Sentinel failover under Celery: `SENTINEL FAILOVER` in the middle of a run.

A real topology on loopback (stress.procs.SentinelCluster: master, replica, three
sentinels) carries both the broker (kombu's sentinel:// transport) and the locks (the
client factory's `Sentinel(...).master_for()`). Two workers x concurrency 2 and one beat
run all five controllers while exactly-once's producer keeps them busy. After a warm-up,
a batch of old audit rows makes an audit-retention run last 20 s or more (a test-only
slowdown on its deletes); while it is in progress, one sentinel is told `SENTINEL FAILOVER`.

A forced failover has two moments: the sentinels switch to the replica within a second,
and about ten seconds later they demote the old master (which stayed writable meanwhile,
so clients still connected to it kept using it) and close its clients. The failover is
complete when the old master reports itself a replica. In between, a fresh process
(`reconcile audit-retention --force`) lands on the new master, where the interrupted
run's lock key has expired, and takes the lock the interrupted run still holds on the old
master: two holders at once, which only the database fence can resolve.

Invariants, from ReconcileRun and the write audit: the interrupted run ended as an error
(`lock_lost`/`lock_unavailable`) or completed; the fresh process held the lock alongside
it (else the scenario proved nothing); every controller succeeds at the first tick after
the failover completed (within one interval plus the task's pickup); no two successful
runs of a controller overlap; fences never go back; every controller write passed a fence
check that no newer grant preceded.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import redis
from django.test import override_settings

from controlplane.common.db import db_now
from controlplane.common.redis import redis_client
from reconcilers.models import ReconcilerState, ReconcileRun, RunOutcome, RunReason
from reconcilers.runtime.fencing import fence_current
from stress import checks, db
from stress.base import (
    HEARTBEAT_INTERVAL_SECONDS,
    Report,
    StressEnv,
    configure,
    data_reset,
    traceback_count,
    wait_until,
)
from stress.exactly_once import PARAMS, Producer, seed_data
from stress.kill import BATCH_SIZE, SLOW_DELETE_SECONDS, _insert
from stress.procs import REPO_ROOT, ProcessSet, SentinelCluster

LONG_RUN = "audit-retention"
# A run may not outlast its period (design.md §4.2), and the long run must outlast the
# demotion of the old master, about 10 s after the failover: its period is long enough.
LONG_RUN_INTERVAL_SECONDS = 30
INTERVALS = {
    "agent-health": 2,
    "job-recovery": 2,
    "queue-priority": 2,
    "token-cleanup": 3,
    LONG_RUN: LONG_RUN_INTERVAL_SECONDS,
}
# x SLOW_DELETE_SECONDS (and the delete itself): a run of 20 s or more, so that the one in
# progress at SENTINEL FAILOVER still runs when the old master is demoted ~10 s later.
LONG_RUN_BATCHES = 400
MIN_BATCHES_BEFORE_FAILOVER = 10
MIN_BATCHES_LEFT_AT_FAILOVER = 300
LOCK_TTL_SECONDS = 5
# The fresh process starts this long after the sentinels switch: its start-up (~2 s) plus
# this reach the new master about when the interrupted run's key has expired there.
FRESH_PROCESS_DELAY_SECONDS = LOCK_TTL_SECONDS - 2.0
MASTER_NAME = "cpstress"
WARM_UP_SECONDS = 90.0
DEMOTION_TIMEOUT_SECONDS = 40.0  # sentinels demote a still-running old master after ~10 s
ERROR_REASONS_ALLOWED = (RunReason.LOCK_LOST, RunReason.LOCK_UNAVAILABLE)
# A tick lands anywhere in the interval after the failover completes; its task then waits
# for a free pool process. Below the shortest interval, so one lost tick more would fail.
PICKUP_TOLERANCE_SECONDS = 1.0
PROBE_PERIOD_SECONDS = 0.05
DRAIN_SECONDS = 3.0


class Probe(threading.Thread):
    """SET through the client factory every 50 ms, as a lock holder would: which master
    answered (by its run id) and when the factory's client failed."""

    def __init__(self) -> None:
        super().__init__(name="stress-failover-probe", daemon=True)
        self.stop_event = threading.Event()
        self.errors: list[tuple[float, str]] = []
        self.masters: dict[str, int] = {}
        self.calls = 0

    def run(self) -> None:
        while not self.stop_event.wait(PROBE_PERIOD_SECONDS):
            self.calls += 1
            try:
                client = redis_client()
                client.set("cpstress:probe", time.time(), px=10_000)
                run_id = str(client.info("server")["run_id"])
                self.masters[run_id] = self.masters.get(run_id, 0) + 1
            except redis.RedisError as exc:
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))


def _in_progress(fence_before: int, ids: list[int]) -> int | None:
    """The fence of an audit-retention run that has deleted some of `ids` and is not done."""
    from controlplane.audit.models import AuditLog

    state = ReconcilerState.objects.filter(controller=LONG_RUN).values("fence").first()
    if not state or state["fence"] <= fence_before:
        return None
    left = AuditLog.objects.filter(pk__in=ids).count()
    if (
        len(ids) - left < MIN_BATCHES_BEFORE_FAILOVER * BATCH_SIZE
        or left < MIN_BATCHES_LEFT_AT_FAILOVER * BATCH_SIZE
    ):
        return None
    if (
        ReconcileRun.objects.filter(controller=LONG_RUN, fence=state["fence"])
        .exclude(outcome=RunOutcome.RUNNING)
        .exists()
    ):
        return None  # that run already ended
    return int(state["fence"])


def _first_success_after(name: str, at: Any) -> ReconcileRun | None:
    return (
        ReconcileRun.objects.filter(
            controller=name, started_at__gte=at, outcome=RunOutcome.SUCCESS, dry_run=False
        )
        .order_by("started_at")
        .first()
    )


def run(env: StressEnv, *, settle_seconds: float = 10.0, workers: int = 2) -> Report:
    report = Report("failover: SENTINEL FAILOVER mid-run, broker and locks on Sentinel")
    log_dir = env.log_dir / "failover"
    cluster = SentinelCluster(env.sentinel_ports, log_dir, master_name=MASTER_NAME)
    sentinel_env = {
        "REDIS_URL": cluster.url(1),
        "CELERY_BROKER_URL": cluster.url(0),
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
        "RECONCILERS_LOCK_TTL_SECONDS": str(LOCK_TTL_SECONDS),
    }
    procs = ProcessSet(log_dir, env.subprocess_env(**sentinel_env))
    stop = threading.Event()
    producer = Producer(stop)
    probe = Probe()
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
    assert PARAMS[LONG_RUN]["batch_size"] == BATCH_SIZE
    db.write_audit_install()
    db.slow_deletes_install(SLOW_DELETE_SECONDS)
    started = time.monotonic()
    since = db_now()
    moments: dict[str, Any] = {}
    interrupted_fence: int | None = None
    fresh: FreshProcess | None = None
    try:
        cluster.start()
        with override_settings(REDIS_URL=cluster.url(1), REDIS_SENTINEL_MASTER=MASTER_NAME):
            for i in range(workers):
                procs.celery_worker(f"worker{i + 1}", concurrency=2, queue="reconcilers")
            procs.celery_beat("beat")
            producer.start()
            probe.start()
            warm = wait_until(lambda: all(_first_success_after(n, since) for n in INTERVALS), WARM_UP_SECONDS)
            report.check(bool(warm), "not every controller succeeded before the failover (warm-up)")
            if warm:
                cli_env = env.subprocess_env(app=f"{db.WORKER_APP_PREFIX}-cli", **sentinel_env)
                interrupted_fence, fresh = _failover_mid_run(report, cluster, moments, cli_env)
                if fresh is not None:
                    fresh.join(timeout=180)
            if "completed_at" in moments:
                completed = moments["completed_at"]
                wait_until(
                    lambda: all(_first_success_after(n, completed) for n in INTERVALS),
                    2 * max(INTERVALS.values()) + settle_seconds,
                    0.25,
                )
                time.sleep(settle_seconds)
            dead = [p.label for p in procs.procs if not p.alive()]
            report.check(not dead, f"processes died during the run: {dead}")
            for proc in procs.procs:
                if proc.label.startswith("beat"):
                    proc.stop()
            stop.set()
            time.sleep(DRAIN_SECONDS)
            probe.stop_event.set()  # before the settings point back at the shared Redis
            probe.join(timeout=10)
    finally:
        stop.set()
        probe.stop_event.set()
        codes = procs.stop_all()
        producer.join(timeout=30)
        probe.join(timeout=10)
        cluster.stop()
        db.slow_deletes_uninstall()
    try:
        _evaluate(report, procs, since, moments, interrupted_fence, fresh, probe, producer, codes)
    finally:
        db.write_audit_uninstall()
    report.figures["duration_s"] = round(time.monotonic() - started, 1)
    return report


class FreshProcess(threading.Thread):
    """During the failover window, a process that starts afresh (here `manage.py reconcile
    <long run> --force`; in production a new worker child, a CLI run, a restarted pod) asks
    the sentinels and lands on the new master, where the interrupted run's lock key expired
    (its renewals after the switch went to the old master). So it takes the lock while the
    interrupted run still holds it on the old master: two holders, which only the fence
    resolves. Retried while the key is still there (`locked`), until the demotion."""

    def __init__(self, env: dict[str, str], start_at: float, give_up_at: threading.Event) -> None:
        super().__init__(name="stress-failover-fresh-process", daemon=True)
        self.env = env
        self.start_at = start_at
        self.give_up = give_up_at
        self.attempts: list[str] = []
        self.summary: dict[str, Any] | None = None

    def run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        while not self.give_up.is_set():
            done = subprocess.run(
                [sys.executable, "manage.py", "reconcile", LONG_RUN, "--force", "--json"],
                cwd=REPO_ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            try:
                summary = json.loads(done.stdout)
            except ValueError:
                self.attempts.append(f"exit {done.returncode}: {done.stderr[-300:]}")
                return
            self.attempts.append(f"{summary['outcome']}:{summary['reason'] or ''}")
            if summary["reason"] != RunReason.LOCKED:
                self.summary = summary
                return


def _failover_mid_run(
    report: Report, cluster: SentinelCluster, moments: dict[str, Any], cli_env: dict[str, str]
) -> tuple[int | None, FreshProcess | None]:
    fence_before = fence_current(LONG_RUN)
    ids = _insert(LONG_RUN_BATCHES * BATCH_SIZE, timedelta(days=400), "failover")
    fence = wait_until(lambda: _in_progress(fence_before, ids), 60, 0.05)
    if fence is None:
        report.violations.append(f"no {LONG_RUN} run in progress within 60 s to fail over under")
        return None, None
    moments["failover_at"] = db_now()
    t0 = moments["t0"] = time.monotonic()
    old_port, new_port = cluster.failover()
    moments["switched_at"] = db_now()
    t_switched = time.monotonic()
    demoted_event = threading.Event()
    fresh = FreshProcess(cli_env, t_switched + FRESH_PROCESS_DELAY_SECONDS, demoted_event)
    fresh.start()
    demoted = wait_until(lambda: cluster.role(old_port) == "slave", DEMOTION_TIMEOUT_SECONDS, 0.05)
    demoted_event.set()
    t_completed = time.monotonic()
    moments["completed_at"] = db_now()
    report.check(bool(demoted), f"the old master was not demoted within {DEMOTION_TIMEOUT_SECONDS} s")
    report.figures.update(
        {
            "master": f"127.0.0.1:{old_port} -> 127.0.0.1:{new_port}",
            "sentinels_switched_s": round(t_switched - t0, 2),
            "failover_completed_s": round(t_completed - t0, 2),
        }
    )
    return fence, fresh


def _evaluate(
    report: Report,
    procs: ProcessSet,
    since: Any,
    moments: dict[str, Any],
    interrupted_fence: int | None,
    fresh: FreshProcess | None,
    probe: Probe,
    producer: Producer,
    codes: dict[str, int | None],
) -> None:
    runs = checks.runs_load(since, INTERVALS)
    overlaps = checks.overlaps(runs)
    regressions = checks.fence_regressions(runs)
    audit = db.fence_audit_read()
    report.figures.update(
        {
            "processes": f"{sum(1 for p in procs.procs if p.label.startswith('worker'))} workers "
            "(prefork x 2), 1 beat; Redis master + replica + 3 sentinels",
            "intervals_s": INTERVALS,
            "runs": checks.outcome_counts(runs),
            "overlaps": len(overlaps),
            "fence_regressions": len(regressions),
            "fence_grants": audit.grants,
            "controller_write_transactions": audit.write_transactions,
            "unfenced_write_transactions": len(audit.unfenced_transactions),
            "stale_fence_commits": len(audit.stale_commits),
            "producer": producer.counts,
            "exit_codes": codes,
            "tracebacks_in_logs": sum(traceback_count(p.log_text()) for p in procs.procs),
            "broker_reconnect_s": {
                p.label: _broker_reconnects(p.log_text()) for p in procs.procs if p.label.startswith("worker")
            },
        }
    )
    report.violations += [f"overlap: {checks.describe_pair(p)}" for p in overlaps[:10]]
    report.violations += regressions[:10]
    report.violations += [
        f"unfenced controller write in transaction {t}" for t in audit.unfenced_transactions[:10]
    ]
    report.violations += [
        f"{c}: write committed with fence {f} after grant {g}" for c, f, g in audit.stale_commits[:10]
    ]
    report.check(audit.write_transactions > 0, "the write audit saw no controller write (instrument broken)")
    report.check(producer.counts["errors"] == 0, f"producer errors: {producer.counts['errors']}")
    if interrupted_fence is not None:
        interrupted = ReconcileRun.objects.filter(controller=LONG_RUN, fence=interrupted_fence).first()
        outcome = f"{interrupted.outcome}:{interrupted.reason}" if interrupted else "no row"
        report.figures["interrupted_run"] = outcome
        report.check(
            interrupted is not None
            and (
                interrupted.outcome == RunOutcome.SUCCESS
                or (interrupted.outcome == RunOutcome.ERROR and interrupted.reason in ERROR_REASONS_ALLOWED)
            ),
            f"the interrupted {LONG_RUN} run ended as {outcome}: expected success or an error "
            f"with reason {' or '.join(ERROR_REASONS_ALLOWED)}",
        )
        _second_holder(report, interrupted, fresh)
    if "completed_at" in moments:
        _recovery(report, runs, moments)
    t0 = moments.get("t0")
    if t0 is not None:
        window = [round(at - t0, 2) for at, _ in probe.errors]
        report.figures["probe"] = {
            "calls": probe.calls,
            "errors": len(probe.errors),
            "error_window_s": [min(window), max(window)] if window else None,
            "first_error": probe.errors[0][1] if probe.errors else None,
            "masters_answering": len(probe.masters),
        }


_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


def _broker_reconnects(log_text: str) -> list[float]:
    """Seconds from each "Connection to broker lost" to the next "Connected to" in a worker log."""
    lost: datetime | None = None
    gaps: list[float] = []
    for line in log_text.splitlines():
        stamp = _LOG_TIME.match(line)
        if stamp is None:
            continue
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if "Connection to broker lost" in line:
            lost = at
        elif "Connected to" in line and lost is not None:
            gaps.append(round((at - lost).total_seconds(), 3))
            lost = None
    return gaps


def _second_holder(report: Report, interrupted: ReconcileRun | None, fresh: FreshProcess | None) -> None:
    """The fresh process must have held the lock while the interrupted run still did (else
    the scenario never split the lock and proves nothing about the fence)."""
    if fresh is None:
        return
    report.figures["fresh_process_attempts"] = fresh.attempts
    second = None
    if fresh.summary is not None and fresh.summary["fence"] is not None:
        second = ReconcileRun.objects.filter(controller=LONG_RUN, fence=fresh.summary["fence"]).first()
    both = bool(
        interrupted is not None
        and second is not None
        and interrupted.fence is not None
        and second.fence is not None
        and second.fence > interrupted.fence
        and interrupted.finished_at is not None
        and second.started_at < interrupted.finished_at
    )
    report.figures["two_lock_holders_at_once"] = both
    if second is not None:
        report.figures["fresh_process_run"] = f"{second.outcome}:{second.reason} fence {second.fence}"
    report.check(
        both,
        "the fresh process never held the lock while the interrupted run did: the failover did not "
        f"split the lock, so the fence was not exercised (attempts: {fresh.attempts})",
    )


def _recovery(report: Report, runs: list[checks.RunRow], moments: dict[str, Any]) -> None:
    """Per controller: the first successful run still going when the failover completed or
    started after it must start within one interval of completion, plus the task's pickup
    (a negative delay: it ran through the failover), i.e. the first tick after the failover
    succeeds; the longest gap between successes around it, in missed runs; and what the runs
    in the failover window recorded instead."""
    failover_at, completed_at = moments["failover_at"], moments["completed_at"]
    delays: dict[str, float | None] = {}
    missed: dict[str, int] = {}
    instead: dict[str, dict[str, int]] = {}
    for name, interval in INTERVALS.items():
        first = (
            ReconcileRun.objects.filter(
                controller=name, finished_at__gte=completed_at, outcome=RunOutcome.SUCCESS, dry_run=False
            )
            .order_by("started_at")
            .first()
        )
        delay = (first.started_at - completed_at).total_seconds() if first else None
        delays[name] = round(delay, 2) if delay is not None else None
        allowed = interval + PICKUP_TOLERANCE_SECONDS
        report.check(
            delay is not None and delay <= allowed,
            f"{name}: first success {delays[name]} s after the failover completed (allowed {allowed} s)",
        )
        mine = [r for r in runs if r.controller == name]
        window_start = failover_at - timedelta(seconds=interval)
        starts = [r.started_at for r in mine if r.real_success and r.started_at >= window_start]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
        missed[name] = max((round(g / interval) - 1 for g in gaps), default=0)
        window_end = completed_at + timedelta(seconds=interval)
        others = Counter(
            f"{r.outcome}:{r.reason}"
            for r in mine
            if not r.real_success and failover_at <= r.started_at <= window_end
        )
        if others:
            instead[name] = dict(sorted(others.items()))
    report.figures.update(
        {
            "first_success_after_failover_completed_s": delays,  # start minus completion
            "runs_missed_around_failover": missed,
            "non_success_runs_during_failover": instead,
        }
    )
