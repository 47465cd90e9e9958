"""`manage.py simulate`: drive a fleet of agents over HTTP against a running server.

Each simulated agent registers with a bootstrap token and runs two threads: one
heartbeats at the interval the server returns, one claims and works jobs (start,
progress, complete; some fail). A fraction crash mid-job (stop heartbeating and
reporting for good) and a fraction go silent mid-job for a while and then come back
to report on a job that may have moved on (their stale reports must get 409). Producer
threads enqueue platform jobs at --rate per second across a few tenants of every plan.

After --duration seconds producers stop, agents stop claiming, finish the job in hand
and stop; the summary is read from the database. Every loop is bounded by the
deadline, and only loopback servers are accepted: this is a load generator.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, connection
from django.db.models import Count, Q

from controlplane.agents.models import Agent, AgentHealth
from controlplane.commands import models as command_models
from controlplane.commands.models import CommandStatus, StatusReason
from controlplane.commands.services import command_enqueue_many
from controlplane.common.actors import actor_for_controller
from controlplane.common.db import db_now
from controlplane.demo.fleet import fleet_run
from controlplane.tenants.models import Plan, Tenant
from controlplane.tokens.services import token_issue

try:
    import httpx
except ImportError:  # the demo extra is not installed: handle() says how to get it (exit 2)
    httpx = None  # type: ignore[assignment]

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
HTTP_TIMEOUT_SECONDS = 10.0
KEEPALIVE_EXPIRY_SECONDS = 1.0
IDLE_POLL_SECONDS = 0.5  # wait after a 204 before claiming again
PROGRESS_EVERY_SECONDS = 0.5
PRODUCER_TICK_SECONDS = 0.2
REGISTER_RETRIES = 5
DRAIN_GRACE_SECONDS = 15.0  # how long stopping agents may take to finish the job in hand
REQUEUE_REASONS = (StatusReason.STUCK, StatusReason.HOLDER_OFFLINE, StatusReason.NOT_PICKED_UP)
MISSING_DEMO_EXTRA = "simulate needs httpx, from the demo extra: pip install 'controlplane[demo]'"


def _usage_error(message: str) -> CommandError:
    return CommandError(message, returncode=2)


def _loopback_check(base_url: str) -> None:
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or url.hostname not in LOOPBACK_HOSTS:
        raise _usage_error("--base-url must be an http(s) URL on a loopback host (127.0.0.1, localhost, ::1)")


@dataclass
class Stats:
    """Client-side counters shared by all threads (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


@dataclass
class FleetPlan:
    """What the run does; built from the command line."""

    base_url: str
    token: str
    agents: int
    duration: float
    rate: float
    crash_fraction: float
    silent_fraction: float
    silence_seconds: float | None
    fail_fraction: float
    job_seconds: float
    seed: int | None


class SimAgent:
    """One agent: a heartbeat thread and a work thread sharing one HTTP client."""

    def __init__(
        self, index: int, plan: FleetPlan, stats: Stats, stop: threading.Event, rng: random.Random
    ) -> None:
        self.name = f"sim-agent-{index}"
        self.plan = plan
        self.stats = stats
        self.stop = stop  # the run is over: stop claiming, finish the job in hand
        self.rng = rng
        self.dead = threading.Event()  # crashed: no more requests of any kind
        self.silent_until = 0.0  # monotonic time until which the agent sends nothing
        self.client = httpx.Client(
            base_url=plan.base_url,
            timeout=HTTP_TIMEOUT_SECONDS,
            # Drop idle connections before the server does (gunicorn's keep-alive is 2 s):
            # reusing one the server is closing fails a POST that must not be retried blindly.
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS),
        )
        self.agent_id: int | None = None
        self.interval = 30.0
        self.start_time = time.monotonic()
        role = rng.random()
        self.crashes = role < plan.crash_fraction
        self.goes_silent = not self.crashes and role < plan.crash_fraction + plan.silent_fraction
        # Misbehaviour happens at the first job taken after a random point of the run.
        self.trouble_at = self.start_time + rng.uniform(0.1, 0.7) * plan.duration
        self.threads: list[threading.Thread] = []

    # -- protocol ------------------------------------------------------------------------
    def register(self) -> bool:
        for attempt in range(REGISTER_RETRIES):
            try:
                response = self.client.post(
                    "/api/v1/agents/register",
                    json={"bootstrap_token": self.plan.token, "name": self.name, "capabilities": ["sim"]},
                )
            except httpx.HTTPError as exc:
                self.stats.add(f"http_error_{type(exc).__name__}")
                time.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code == 201:
                body = response.json()
                self.agent_id = body["agent_id"]
                self.client.headers["Authorization"] = f"Bearer {body['api_key']}"
                self.stats.add("registered")
                return True
            self.stats.add(f"register_{response.status_code}")
            return False
        return False

    def _post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response | None:
        try:
            return self.client.post(path, json=body) if body is not None else self.client.post(path)
        except httpx.HTTPError as exc:
            self.stats.add(f"http_error_{type(exc).__name__}")
            return None

    def heartbeat(self) -> None:
        response = self._post("/api/v1/agents/heartbeat")
        if response is not None and response.status_code == 200:
            self.interval = float(response.json()["heartbeat_interval_seconds"])
            self.stats.add("heartbeats")

    # -- threads -------------------------------------------------------------------------
    def _silent(self) -> bool:
        return time.monotonic() < self.silent_until

    def heartbeat_loop(self) -> None:
        while not self.dead.is_set() and not self.stop.is_set():
            if not self._silent():
                self.heartbeat()
            self.stop.wait(self.interval * self.rng.uniform(0.8, 1.0))

    def work_loop(self, hard_deadline: float) -> None:
        while not self.dead.is_set() and not self.stop.is_set() and time.monotonic() < hard_deadline:
            if self._silent():
                time.sleep(0.2)
                continue
            response = self._post("/api/v1/jobs/claim")
            if response is None or response.status_code != 200:
                if response is not None and response.status_code != 204:
                    self.stats.add(f"claim_{response.status_code}")
                self.stop.wait(IDLE_POLL_SECONDS)
                continue
            job = response.json()
            self.stats.add("claimed")
            self.work(job["job_id"], job["attempt"], hard_deadline)

    def _report(self, job_id: int, action: str, body: dict[str, Any]) -> bool:
        response = self._post(f"/api/v1/jobs/{job_id}/{action}", body)
        if response is None:
            return False
        if response.status_code == 409:
            self.stats.add("stale_reports_refused")
            return False
        if response.status_code != 200:
            self.stats.add(f"{action}_{response.status_code}")
            return False
        return True

    def work(self, job_id: int, attempt: int, hard_deadline: float) -> None:
        if not self._report(job_id, "start", {"attempt": attempt}):
            return
        job_seconds = self.plan.job_seconds * self.rng.uniform(0.5, 1.5)
        done_at = time.monotonic() + job_seconds
        troubled = time.monotonic() >= self.trouble_at
        while time.monotonic() < min(done_at, hard_deadline):
            time.sleep(min(PROGRESS_EVERY_SECONDS, max(0.0, done_at - time.monotonic())))
            if troubled and self.crashes:
                self.stats.add("crashed")
                self.dead.set()
                return
            if troubled and self.goes_silent and self.silent_until == 0.0:
                silence = self.plan.silence_seconds or 4 * self.interval
                self.silent_until = time.monotonic() + silence
                self.stats.add("went_silent")
                # Back after the silence, still believing it holds the job.
                time.sleep(max(0.0, min(self.silent_until, hard_deadline) - time.monotonic()))
                self.heartbeat()
            if not self._report(job_id, "progress", {"attempt": attempt, "message": "working"}):
                return
        if self.rng.random() < self.plan.fail_fraction:
            if self._report(job_id, "fail", {"attempt": attempt, "error": "simulated failure"}):
                self.stats.add("reported_failed")
        elif self._report(job_id, "complete", {"attempt": attempt}):
            self.stats.add("reported_completed")

    def start(self, hard_deadline: float) -> None:
        self.heartbeat()
        for target, args in ((self.heartbeat_loop, ()), (self.work_loop, (hard_deadline,))):
            thread = threading.Thread(target=target, args=args, name=f"{self.name}-{target.__name__}")
            thread.daemon = True
            thread.start()
            self.threads.append(thread)

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(max(0.0, timeout))
        self.client.close()


def _sim_tenants() -> list[Tenant]:
    tenants = []
    for plan in Plan.values:
        tenant, _ = Tenant.objects.get_or_create(name=f"sim-{plan}", defaults={"plan": plan})
        tenants.append(tenant)
    return tenants


def _produce(rate: float, stop: threading.Event, stats: Stats, rng: random.Random) -> None:
    """Enqueue platform jobs at `rate` per second, spread over the simulation tenants."""
    try:
        tenants = _sim_tenants()
        owed = 0.0
        last = time.monotonic()
        while not stop.is_set():
            stop.wait(PRODUCER_TICK_SECONDS)
            current = time.monotonic()
            owed += (current - last) * rate
            last = current
            due = int(owed)
            if due <= 0:
                continue
            owed -= due
            per_tenant = Counter(rng.choice(tenants).pk for _ in range(due))
            for tenant in tenants:
                n = per_tenant.get(tenant.pk, 0)
                if n:
                    command_enqueue_many(tenant, "sim", [{"work": "sim"}] * n, is_platform_job=True)
                    stats.add("enqueued", n)
    finally:
        connection.close()  # this thread's own connection


class Command(BaseCommand):
    help = "Drive a simulated fleet of agents over HTTP against a running server (loopback only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="Server to drive.")
        token = parser.add_mutually_exclusive_group()
        token.add_argument("--token", help="Bootstrap token to register the agents with.")
        token.add_argument("--issue-token", action="store_true", help="Issue a bootstrap token for the run.")
        parser.add_argument(
            "--agents",
            type=int,
            default=10,
            help="Number of agents (1..500; 1..20000 with --heartbeats-only).",
        )
        parser.add_argument(
            "--heartbeats-only",
            action="store_true",
            help="A fleet that only heartbeats, created in the database and driven from one asyncio "
            "process (no token, jobs or faults); reports whether any agent went offline or late.",
        )
        parser.add_argument(
            "--interval", type=float, default=30.0, help="--heartbeats-only: seconds between beats (1..600)."
        )
        parser.add_argument(
            "--connections", type=int, default=32, help="--heartbeats-only: keep-alive connections (1..512)."
        )
        parser.add_argument(
            "--stale-timeout",
            type=float,
            default=90.0,
            help="--heartbeats-only: a gap longer than this is late (agent-health's stale_timeout_seconds).",
        )
        parser.add_argument("--duration", type=float, default=30.0, help="Seconds to run (1..3600).")
        parser.add_argument("--rate", type=float, default=5.0, help="Jobs enqueued per second (0..1000).")
        parser.add_argument(
            "--crash-fraction", type=float, default=0.1, help="Agents that die mid-job (0..1)."
        )
        parser.add_argument(
            "--silent-fraction",
            type=float,
            default=0.05,
            help="Agents that go silent mid-job for a while, then come back (0..1).",
        )
        parser.add_argument(
            "--silence-seconds",
            type=float,
            default=None,
            help="How long silent agents stay silent (default 4 heartbeat intervals).",
        )
        parser.add_argument("--fail-fraction", type=float, default=0.1, help="Jobs reported failed (0..1).")
        parser.add_argument("--job-seconds", type=float, default=1.0, help="Mean job duration (0..600).")
        parser.add_argument("--seed", type=int, default=None, help="Random seed for a repeatable fleet.")
        parser.add_argument("--json", action="store_true", help="Print the summary as one JSON object.")

    def run_from_argv(self, argv: list[str]) -> None:
        # Before the arguments are parsed, so a bare `manage.py simulate` names what is missing too.
        if httpx is None:
            self.stderr.write(f"CommandError: {MISSING_DEMO_EXTRA}")
            sys.exit(2)
        super().run_from_argv(argv)

    def handle(self, *args: Any, **options: Any) -> None:
        if httpx is None:
            raise _usage_error(MISSING_DEMO_EXTRA)
        if options["heartbeats_only"]:
            self._heartbeats_only(options)
            return
        if not options["token"] and not options["issue_token"]:
            raise _usage_error("one of --token or --issue-token is required (or --heartbeats-only)")
        plan = self._plan(options)
        started = db_now()
        rng = random.Random(plan.seed)
        stats = Stats()
        stop = threading.Event()
        hard_deadline = time.monotonic() + plan.duration + DRAIN_GRACE_SECONDS
        fleet = [SimAgent(i, plan, stats, stop, random.Random(rng.random())) for i in range(plan.agents)]
        registered = [agent for agent in fleet if agent.register()]
        if not registered:
            raise CommandError(f"no agent could register against {plan.base_url}")
        for agent in registered:
            agent.start(hard_deadline)
        producer = threading.Thread(
            target=_produce, args=(plan.rate, stop, stats, random.Random(rng.random())), name="producer"
        )
        producer.start()
        try:
            time.sleep(plan.duration)
        finally:
            stop.set()
            producer.join()
            for agent in fleet:
                agent.join(hard_deadline - time.monotonic())
            close_old_connections()
        summary = self._summary(started, [a.agent_id for a in registered if a.agent_id], stats)
        if options["json"]:
            self.stdout.write(json.dumps(summary, sort_keys=True))
        else:
            for key, value in summary.items():
                self.stdout.write(f"{key:>24}: {value}")

    def _heartbeats_only(self, options: dict[str, Any]) -> None:
        _loopback_check(options["base_url"])
        if urlsplit(options["base_url"]).scheme != "http":
            raise _usage_error("--heartbeats-only speaks plain HTTP: --base-url must be http://")
        checks = {
            "--agents": (options["agents"], 1, 20_000),
            "--duration": (options["duration"], 1, 3600),
            "--interval": (options["interval"], 1, 600),
            "--connections": (options["connections"], 1, 512),
            "--stale-timeout": (options["stale_timeout"], 1, 86_400),
        }
        for flag, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise _usage_error(f"{flag} must be between {low} and {high}")
        result = fleet_run(
            options["base_url"],
            agents=options["agents"],
            interval=options["interval"],
            duration=options["duration"],
            connections=options["connections"],
            stale_timeout=options["stale_timeout"],
            seed=options["seed"],
        )
        summary = {
            "agents": result.agents,
            "heartbeats": result.heartbeats,
            "failed_heartbeats": result.failures,
            "heartbeats_per_second": round(result.heartbeats / options["duration"], 1),
            "latency_p50_ms": round(result.percentile_ms(0.5), 1),
            "latency_p99_ms": round(result.percentile_ms(0.99), 1),
            "max_gap_seconds": round(result.max_gap_seconds, 2),
            "late_agents": result.late_agents,
            "offline_agents": result.offline_agents,
            "held": result.offline_agents == 0 and result.late_agents == 0 and result.failures == 0,
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary, sort_keys=True))
        else:
            for key, value in summary.items():
                self.stdout.write(f"{key:>24}: {value}")
        if not summary["held"]:
            raise CommandError("the fleet did not hold: see offline_agents, late_agents, failed_heartbeats")

    def _plan(self, options: dict[str, Any]) -> FleetPlan:
        _loopback_check(options["base_url"])
        checks = {
            "--agents": (options["agents"], 1, 500),
            "--duration": (options["duration"], 1, 3600),
            "--rate": (options["rate"], 0, 1000),
            "--crash-fraction": (options["crash_fraction"], 0, 1),
            "--silent-fraction": (options["silent_fraction"], 0, 1),
            "--fail-fraction": (options["fail_fraction"], 0, 1),
            "--job-seconds": (options["job_seconds"], 0, 600),
        }
        for flag, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise _usage_error(f"{flag} must be between {low} and {high}")
        if options["crash_fraction"] + options["silent_fraction"] > 1:
            raise _usage_error("--crash-fraction plus --silent-fraction must not exceed 1")
        if options["silence_seconds"] is not None and not 0 < options["silence_seconds"] <= 3600:
            raise _usage_error("--silence-seconds must be between 0 and 3600")
        token = options["token"]
        if options["issue_token"]:
            token = token_issue(
                description="simulate run",
                ttl=timedelta(hours=1),
                max_uses=options["agents"],
                actor=actor_for_controller("simulate"),
            ).raw
        return FleetPlan(
            base_url=options["base_url"].rstrip("/"),
            token=token,
            agents=options["agents"],
            duration=options["duration"],
            rate=options["rate"],
            crash_fraction=options["crash_fraction"],
            silent_fraction=options["silent_fraction"],
            silence_seconds=options["silence_seconds"],
            fail_fraction=options["fail_fraction"],
            job_seconds=options["job_seconds"],
            seed=options["seed"],
        )

    def _summary(self, started: Any, agent_ids: list[int], stats: Stats) -> dict[str, Any]:
        """Counts read from the database: jobs of the simulation tenants created during the run."""
        jobs = command_models.Command.objects.filter(tenant__name__startswith="sim-", created_at__gte=started)
        by_status = jobs.aggregate(
            total=Count("id"),
            **{status: Count("id", filter=Q(status=status)) for status in CommandStatus.values},
            recovered=Count("id", filter=Q(status_reason__in=REQUEUE_REASONS)),
        )
        offline = Agent.objects.filter(pk__in=agent_ids, health=AgentHealth.OFFLINE).count()
        return {
            "jobs_total": by_status["total"],
            "completed": by_status[CommandStatus.COMPLETED],
            "failed": by_status[CommandStatus.FAILED],
            "expired": by_status[CommandStatus.EXPIRED],
            "pending": by_status[CommandStatus.PENDING],
            "in_flight": by_status[CommandStatus.ACKNOWLEDGED] + by_status[CommandStatus.RUNNING],
            "recovered": by_status["recovered"],
            "agents_registered": len(agent_ids),
            "agents_offline": offline,
            "client": dict(sorted(stats.counts.items())),
        }
