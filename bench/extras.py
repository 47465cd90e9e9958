"""Runtime and protocol figures: runner overhead, claim latency, heartbeat throughput over HTTP.

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
RUNNER_OVERHEAD_RUNS = 200
CLAIMERS = 8
CLAIMS_PER_CLAIMER = 250
HEARTBEAT_AGENTS = 64
HEARTBEAT_CLIENTS = 16
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_PORT = 18431  # loopback port for the benchmark's own gunicorn

# Targets from the benchmark issue.
RUNNER_OVERHEAD_TARGET_MS = 5.0
CLAIM_P99_TARGET_MS = 20.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def writeback_settle() -> None:
    """Finish the checkpoint that the previous phases' bulk writes started.

    Loading and changing millions of rows leaves gigabytes of dirty pages, which the
    checkpointer writes back over the next few minutes (checkpoint_completion_target).
    Every commit made meanwhile waits for its WAL flush behind that write-back, so a
    latency figure taken then measures the benchmark's own previous phase, not the code
    under test. A CHECKPOINT writes it all now (it needs superuser or pg_checkpoint, as
    the benchmark's own database user has).
    """
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")


def runner_overhead_ms() -> float:
    """Median wall time of a no-op reconcile through lock, fence, metrics and run history."""
    from reconcilers.runtime.contract import Controller, ReconcileContext, ReconcileResult
    from reconcilers.services import run_controller
    from reconcilers.testing import controllers_installed

    class NoOp(Controller):
        name: ClassVar[str] = "bench-noop"
        default_interval_seconds: ClassVar[int] = 60
        step_names: ClassVar[tuple[str, ...]] = ("nothing",)

        def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
            return self.result(nothing=0)

    timings = []
    with controllers_installed(NoOp):
        for _ in range(RUNNER_OVERHEAD_RUNS):
            started = time.perf_counter()
            summary = run_controller(NoOp.name, force=True, trigger="bench")
            timings.append((time.perf_counter() - started) * 1000)
            assert summary.outcome == "success", summary
    return statistics.median(timings)


def claim_latency_ms(scale: float) -> tuple[float, float, int]:
    """p50 and p99 of command_claim with 8 concurrent claimers over the pending platform queue.

    Each claimer is its own process with its own connection, as claims arrive in
    production (one per gunicorn worker); threads in one process would measure the GIL.
    """
    from bench.generate import Sizes, generate
    from controlplane.agents.models import Agent

    generate(Sizes.at(scale), ("agents", "commands"))
    writeback_settle()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM commands_command WHERE status = 'pending' AND is_platform_job")
        queued = int(cursor.fetchone()[0])
    claimers = list(
        Agent.objects.filter(is_platform_agent=True, health="online", last_seen_at__isnull=False)
        .order_by("-last_seen_at")
        .values_list("pk", flat=True)[:CLAIMERS]
    )
    Agent.objects.filter(pk__in=claimers).update(max_concurrent_jobs=1_000_000)
    # The claimers' current jobs don't matter here: every claim takes a new pending job.
    connection.close()  # a forked child must open its own connection, never share this one
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(len(claimers))
    results: multiprocessing.queues.Queue[list[float]] = fork.Queue()
    processes = [fork.Process(target=_claim_loop, args=(pk, barrier, results)) for pk in claimers]
    for process in processes:
        process.start()
    latencies = [ms for _ in processes for ms in results.get(timeout=600)]
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"claimer process exited with {process.exitcode}")
    return _percentile(latencies, 0.5), _percentile(latencies, 0.99), queued


def _claim_loop(agent_id: int, barrier: Any, results: Any) -> None:
    from controlplane.commands.services import command_claim

    mine: list[float] = []
    try:
        command_claim(agent_id)  # opens this process's connection outside the timing
        barrier.wait()
        for _ in range(CLAIMS_PER_CLAIMER):
            started = time.perf_counter()
            claimed = command_claim(agent_id)
            mine.append((time.perf_counter() - started) * 1000)
            if claimed is None:
                break
    finally:
        connection.close()
        results.put(mine)


def heartbeat_throughput() -> tuple[float, float, float]:
    """Heartbeats per second, p50 and p99 ms, through gunicorn with production settings."""
    from controlplane.agents.services import agent_create

    keys = [
        agent_create(name=f"bench-hb-{i}", tenant=None, actor="system:bench").api_key
        for i in range(HEARTBEAT_AGENTS)
    ]
    connection.close()
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "LOG_LEVEL": "WARNING",
    }
    workers = str(2 * (os.cpu_count() or 1) + 1)
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "controlplane.wsgi:application",
            "--bind", f"127.0.0.1:{HEARTBEAT_PORT}", "--workers", workers, "--log-level", "warning",
        ],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{HEARTBEAT_PORT}/api/v1/agents/heartbeat"
    try:
        _wait_until_up(f"http://127.0.0.1:{HEARTBEAT_PORT}/healthz")
        latencies: list[float] = []
        errors = 0
        lock = threading.Lock()
        deadline = time.monotonic() + HEARTBEAT_SECONDS

        def client_loop(index: int) -> None:
            nonlocal errors
            mine, failed = [], 0
            with httpx.Client(timeout=10) as client:
                i = index
                while time.monotonic() < deadline:
                    key = keys[i % len(keys)]
                    i += HEARTBEAT_CLIENTS
                    started = time.perf_counter()
                    response = client.post(url, headers={"Authorization": f"Bearer {key}"})
                    mine.append((time.perf_counter() - started) * 1000)
                    failed += response.status_code != 200
            with lock:
                latencies.extend(mine)
                errors += failed

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(HEARTBEAT_CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        if errors:
            raise RuntimeError(f"{errors} heartbeats failed")
        return len(latencies) / elapsed, _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s:g}s")


def measure_extras(scale: float) -> dict[str, Any]:
    writeback_settle()
    overhead = runner_overhead_ms()
    p50, p99, queued = claim_latency_ms(scale)
    rate, hb_p50, hb_p99 = heartbeat_throughput()
    overhead_verdict = "met" if overhead <= RUNNER_OVERHEAD_TARGET_MS else "MISSED"
    return {
        "runner overhead (no-op reconcile, median of 200)": f"{overhead:.2f} ms "
        f"(target <= {RUNNER_OVERHEAD_TARGET_MS:g} ms: {overhead_verdict})",
        f"claim latency, {CLAIMERS} concurrent claimers over {queued:,} queued jobs": f"p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms (target p99 <= {CLAIM_P99_TARGET_MS:g} ms: "
        f"{'met' if p99 <= CLAIM_P99_TARGET_MS else 'MISSED'})",
        f"heartbeats over HTTP (gunicorn, {HEARTBEAT_CLIENTS} clients, DEBUG off)": f"{rate:,.0f}/s, "
        f"p50 {hb_p50:.1f} ms, p99 {hb_p99:.1f} ms",
    }
