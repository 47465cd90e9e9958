"""Scenario 4, heartbeat race: 200 agents heartbeating just inside stale_timeout while
agent-health sweeps every second (`manage.py runcontrollers --only agent-health`).

Heartbeats go through `controlplane.agents.services.agent_heartbeat` from a few threads
(every 3.2-3.7 s per agent, stale_timeout 4 s). A sampler queries continuously for the
forbidden state: an agent offline whose last_seen_at is newer than now - stale_timeout
(a committed heartbeat lost to a concurrent sweep). The brake is off
(max_offline_fraction 1) so it cannot hide a mass marking. Twenty more agents stop
heartbeating half-way: they must go offline, which proves the sweep is live. A heartbeat
that itself came late (gap over stale_timeout on a loaded machine) may legitimately mark
its agent offline until the next one; those are counted, not flagged.
"""

from __future__ import annotations

import heapq
import random
import signal
import threading
import time
from typing import Any

from django.db import close_old_connections, connection
from django.test import override_settings

from controlplane.agents.models import Agent, AgentHealth
from controlplane.agents.services import agent_create, agent_heartbeat
from controlplane.common.db import db_now
from reconcilers.models import ReconcileRun, RunOutcome
from stress import db
from stress.base import ACTOR, HEARTBEAT_INTERVAL_SECONDS, Report, StressEnv, configure, data_reset
from stress.procs import ProcessSet, RedisServer

NAME = "agent-health"
STALE_TIMEOUT_SECONDS = 4
HEARTBEAT_EVERY = (3.2, 3.7)  # seconds between one agent's heartbeats: just inside the timeout
LIVE_AGENTS = 200
DOOMED_AGENTS = 20
HEARTBEAT_THREADS = 8
OFFLINE_DEADLINE_SECONDS = STALE_TIMEOUT_SECONDS + 4  # doomed agents: timeout + a few sweeps


class Heartbeater(threading.Thread):
    """Heartbeats its agents, each on its own jittered schedule, until told to stop."""

    def __init__(
        self, index: int, agent_ids: list[int], stop: threading.Event, doomed_stop: threading.Event
    ) -> None:
        super().__init__(name=f"heartbeater-{index}", daemon=True)
        self.agent_ids = agent_ids
        self.stop_event = stop
        self.doomed_stop = doomed_stop
        self.doomed: set[int] = set()
        self.rng = random.Random(index)
        self.sent = 0
        self.errors: list[str] = []
        self.late = 0  # heartbeats that came later than the stale timeout
        self.max_gap = 0.0

    def run(self) -> None:
        now = time.monotonic()
        due = [(now + self.rng.uniform(0, HEARTBEAT_EVERY[0]), agent_id) for agent_id in self.agent_ids]
        heapq.heapify(due)
        last: dict[int, float] = {}
        try:
            while not self.stop_event.is_set():
                at, agent_id = due[0]
                wait = at - time.monotonic()
                if wait > 0 and self.stop_event.wait(min(wait, 0.2)):
                    break
                if wait > 0:
                    continue
                heapq.heappop(due)
                if agent_id in self.doomed and self.doomed_stop.is_set():
                    continue  # a dead agent: no heartbeat ever again
                try:
                    agent_heartbeat(agent_id)
                    self.sent += 1
                except Exception as exc:
                    self.errors.append(repr(exc))
                    close_old_connections()
                t = time.monotonic()
                if agent_id in last:
                    gap = t - last[agent_id]
                    self.max_gap = max(self.max_gap, gap)
                    self.late += gap > STALE_TIMEOUT_SECONDS
                last[agent_id] = t
                heapq.heappush(due, (t + self.rng.uniform(*HEARTBEAT_EVERY), agent_id))
        finally:
            connection.close()


class Sampler(threading.Thread):
    """Looks for the forbidden state as often as it can."""

    def __init__(self, stop: threading.Event, live: set[int]) -> None:
        super().__init__(name="offline-sampler", daemon=True)
        self.stop_event = stop
        self.live = live
        self.samples = 0
        self.violations: list[tuple[int, Any, Any]] = []
        self.offline_live_seen = 0  # live agents seen offline with a stale last_seen_at (late heartbeat)

    def run(self) -> None:
        table = Agent._meta.db_table
        try:
            with connection.cursor() as cursor:
                while not self.stop_event.is_set():
                    cursor.execute(
                        f"SELECT id, last_seen_at, statement_timestamp(), "
                        f"last_seen_at > statement_timestamp() - make_interval(secs => %s) "
                        f"FROM {table} WHERE health = %s",
                        [STALE_TIMEOUT_SECONDS, AgentHealth.OFFLINE],
                    )
                    self.samples += 1
                    for agent_id, seen, at, fresh in cursor.fetchall():
                        if fresh:
                            self.violations.append((agent_id, seen, at))
                        elif agent_id in self.live:
                            self.offline_live_seen += 1
                    time.sleep(0.02)
        finally:
            connection.close()


def run(env: StressEnv, *, duration: float = 60.0) -> Report:
    report = Report(
        f"heartbeat race: {LIVE_AGENTS} agents at {HEARTBEAT_EVERY} s vs a {STALE_TIMEOUT_SECONDS} s timeout"
    )
    log_dir = env.log_dir / "heartbeat"
    redis_server = RedisServer(env.redis_port, log_dir)
    procs = ProcessSet(log_dir, env.subprocess_env(app=f"{db.WORKER_APP_PREFIX}-manager"))
    with override_settings(AGENT_HEARTBEAT_INTERVAL_SECONDS=HEARTBEAT_INTERVAL_SECONDS):
        data_reset()
        configure(
            {
                NAME: {
                    "interval_seconds": 1,
                    "run_timeout_seconds": 1,  # a run may not outlast its period
                    "params": {
                        "stale_timeout_seconds": STALE_TIMEOUT_SECONDS,
                        "max_offline_fraction": 1.0,  # brake off: it must not hide a mass marking
                        "brake_min_agents": 1_000_000,
                    },
                }
            }
        )
    ids = [
        agent_create(name=f"hb-{i}", tenant=None, actor=ACTOR).agent.pk
        for i in range(LIVE_AGENTS + DOOMED_AGENTS)
    ]
    # No heartbeat here: agents are `unknown` (never judged) until their first heartbeat from
    # a heartbeater thread, so the first gap is measured like every other one.
    live, doomed = ids[:LIVE_AGENTS], set(ids[LIVE_AGENTS:])
    stop, doomed_stop, sampler_stop = threading.Event(), threading.Event(), threading.Event()
    chunks = [ids[i::HEARTBEAT_THREADS] for i in range(HEARTBEAT_THREADS)]
    beaters = [Heartbeater(i, chunk, stop, doomed_stop) for i, chunk in enumerate(chunks)]
    for beater in beaters:
        beater.doomed = doomed & set(beater.agent_ids)
    sampler = Sampler(sampler_stop, set(live))
    since = db_now()
    started = time.monotonic()
    manager = None
    try:
        redis_server.start()
        for beater in beaters:
            beater.start()
        sampler.start()
        manager = procs.manage("runcontrollers", "runcontrollers", "--only", NAME)
        time.sleep(duration / 2)
        doomed_stop.set()
        time.sleep(duration / 2)
        manager.popen.send_signal(signal.SIGTERM)
        manager.popen.wait(timeout=60)
        # The sweeps have stopped: one more round of heartbeats brings back any agent whose
        # heartbeat came late, so at the end no live agent may be offline.
        time.sleep(HEARTBEAT_EVERY[1] + 0.5)
    finally:
        sampler_stop.set()
        stop.set()
        for thread in (*beaters, sampler):
            if thread.is_alive():
                thread.join(timeout=30)
        procs.stop_all()
        redis_server.stop()
    elapsed = time.monotonic() - started
    runs = ReconcileRun.objects.filter(controller=NAME, started_at__gte=since)
    successes = list(runs.filter(outcome=RunOutcome.SUCCESS).values("steps", "flags"))
    brake = sum(1 for r in successes if (r["flags"] or {}).get("brake_engaged"))
    marked = sum(int((r["steps"] or {}).get("stale_offline", 0)) for r in successes)
    live_offline_end = Agent.objects.filter(pk__in=live, health=AgentHealth.OFFLINE).count()
    doomed_rows = list(
        Agent.objects.filter(pk__in=doomed).values("health", "last_seen_at", "last_offline_at")
    )
    doomed_offline = [r for r in doomed_rows if r["health"] == AgentHealth.OFFLINE]
    lag = max(
        (
            (r["last_offline_at"] - r["last_seen_at"]).total_seconds()
            for r in doomed_offline
            if r["last_offline_at"] and r["last_seen_at"]
        ),
        default=None,
    )
    errors = [e for b in beaters for e in b.errors]
    report.figures.update(
        {
            "duration_s": round(elapsed, 1),
            "agents": f"{LIVE_AGENTS} live + {DOOMED_AGENTS} stopping half-way",
            "heartbeats_sent": sum(b.sent for b in beaters),
            "heartbeat_errors": len(errors),
            "late_heartbeats_over_timeout": sum(b.late for b in beaters),
            "max_heartbeat_gap_s": round(max(b.max_gap for b in beaters), 2),
            "agent_health_runs": {
                "success": len(successes),
                "skipped_or_error": runs.exclude(outcome=RunOutcome.SUCCESS).count(),
            },
            "brake_engaged_runs": brake,
            "agents_marked_offline": marked,
            "samples": sampler.samples,
            "offline_with_fresh_heartbeat": len(sampler.violations),
            "live_agent_offline_samples": sampler.offline_live_seen,
            "live_agents_offline_at_end": live_offline_end,
            "doomed_offline_at_end": f"{len(doomed_offline)} of {DOOMED_AGENTS}",
            "doomed_max_seconds_to_offline": round(lag, 2) if lag is not None else None,
        }
    )
    report.violations += [
        f"agent {a} offline with last_seen_at {s.isoformat()} at {t.isoformat()}"
        for a, s, t in sampler.violations[:10]
    ]
    report.check(not errors, f"heartbeat errors: {errors[:3]}")
    report.check(brake == 0, f"the brake engaged in {brake} runs")
    report.check(live_offline_end == 0, f"{live_offline_end} live agents offline at the end")
    report.check(len(doomed_offline) == DOOMED_AGENTS, "not every silent agent went offline (sweep not live)")
    report.check(
        lag is not None and lag <= OFFLINE_DEADLINE_SECONDS,
        f"silent agents went offline {lag} s after their last heartbeat (allowed {OFFLINE_DEADLINE_SECONDS})",
    )
    report.check(sampler.samples > 0, "the sampler never ran")
    report.check(bool(manager) and manager.popen.returncode == 0, "runcontrollers did not exit 0 on SIGTERM")
    return report
