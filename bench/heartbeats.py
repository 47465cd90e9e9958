"""Heartbeats over HTTP: the project against the raw-psycopg floor app, same gunicorn, same load.

    python -m bench.heartbeats [--agents 10000] [--trials 3] [--seconds 10] [--connections 16 64]
                               [--workers 3] [--out docs/benchmarks.md]

Both servers run the README's gunicorn command line (sync workers; --workers as there) on
loopback ports, side by side for the whole run. A closed-loop asyncio client (keep-alive
HTTP/1.1 connections, each sending its next heartbeat as soon as the previous answer
arrives) drives them in turn: for each connection count, trial 1 project, trial 1 floor,
trial 2 project, ... so load from other processes on the machine hits both alike. Each
run is measured after a warm-up; its CPU per heartbeat is the CPU time the server's
gunicorn processes and its PostgreSQL backends used during the run, over its heartbeats
(sampled twice a second, so a backend reopened meanwhile is counted).
The fleet (90 % platform agents, 10 % tenant agents) heartbeats round robin. The fleet a
server sustains at the heartbeat interval is heartbeats/s x interval.

The report section goes between HEARTBEAT_MARKERS in --out (added at the end if absent).
Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import section_write

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_PATH = "/api/v1/agents/heartbeat"
PORTS = {"project": 17221, "floor": 17222}  # loopback ports of the two servers
WARMUP_SECONDS = 2.0
SAMPLE_SECONDS = 0.5  # CPU sampling period during a run
HEARTBEAT_INTERVAL_SECONDS = 30  # the default AGENT_HEARTBEAT_INTERVAL_SECONDS
TENANT_AGENT_FRACTION = 0.1
RATIO_TARGET = 0.6  # project / floor heartbeats/s at 64 connections (goal 0.8)
P99_TARGET_MS = 50.0
HEARTBEAT_MARKERS = ("<!-- heartbeat-floor: start -->", "<!-- heartbeat-floor: end -->")


@dataclass
class Run:
    server: str
    connections: int
    heartbeats: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    gunicorn_cpu_s: float
    postgres_cpu_s: float

    @property
    def rate(self) -> float:
        return self.heartbeats / self.seconds

    @property
    def gunicorn_ms_per_beat(self) -> float:
        return 1000 * self.gunicorn_cpu_s / max(1, self.heartbeats)

    @property
    def postgres_ms_per_beat(self) -> float:
        return 1000 * self.postgres_cpu_s / max(1, self.heartbeats)


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)


# --- the fleet ----------------------------------------------------------------------------


def fleet_create(agents: int) -> list[str]:
    """A fresh fleet of `agents` (no leases yet); returns their keys."""
    from controlplane.agents.models import Agent, AgentLease
    from controlplane.common.secrets import issue_secret
    from controlplane.tenants.models import Tenant

    AgentLease.objects.filter(agent__name__startswith="bench-fleet-").delete()
    Agent.objects.filter(name__startswith="bench-fleet-").delete()
    tenant, _ = Tenant.objects.get_or_create(name="bench-fleet")
    keys, rows = [], []
    tenant_every = round(1 / TENANT_AGENT_FRACTION)
    for i in range(agents):
        secret = issue_secret("cpa")
        keys.append(secret.raw)
        platform = i % tenant_every != 0
        rows.append(
            Agent(
                name=f"bench-fleet-{i}",
                tenant=None if platform else tenant,
                is_platform_agent=platform,
                api_key_hash=secret.hash,
                api_key_prefix=secret.prefix,
            )
        )
    Agent.objects.bulk_create(rows, batch_size=2000)
    return keys


# --- the servers --------------------------------------------------------------------------


def server_start(name: str, workers: int, worker_class: str) -> subprocess.Popen[bytes]:
    app = "controlplane.wsgi:application" if name == "project" else "bench.floor_app:application"
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "LOG_LEVEL": "WARNING",
        "PGAPPNAME": f"bench-{name}",  # libpq's application_name: finds its backends
    }
    command = [
        sys.executable, "-m", "gunicorn", app,
        "--bind", f"127.0.0.1:{PORTS[name]}", "--workers", str(workers),
        "--worker-class", worker_class, "--log-level", "warning",
    ]  # fmt: skip
    if name == "project":
        command += ["--config", "python:controlplane.gunicorn_conf"]
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)


def server_stop(server: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    server.wait(timeout=30)


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


class CpuSampler(threading.Thread):
    """CPU seconds used by a server's gunicorn processes and its PostgreSQL backends during a
    run, sampled every SAMPLE_SECONDS: a backend that ends during the run (CONN_MAX_AGE
    reopens each worker's connection every minute) counts up to its last sample, one that
    starts counts from zero."""

    def __init__(self, name: str, server: subprocess.Popen[bytes]) -> None:
        super().__init__(name=f"cpu-{name}", daemon=True)
        self.server_name, self.server = name, server
        self.stop_event = threading.Event()
        self.baseline: tuple[dict[int, float], dict[int, float]] = self._sample()
        self.last = ({**self.baseline[0]}, {**self.baseline[1]})

    def _sample(self) -> tuple[dict[int, float], dict[int, float]]:
        return _cpu_seconds(_gunicorn_pids(self.server)), _cpu_seconds(_backend_pids(self.server_name))

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stop_event.wait(SAMPLE_SECONDS):
                for last, now in zip(self.last, self._sample(), strict=True):
                    last.update(now)
        finally:
            connection.close()

    def used(self) -> tuple[float, float]:
        self.stop_event.set()
        self.join()
        for last, now in zip(self.last, self._sample(), strict=True):
            last.update(now)
        gunicorn, postgres = (
            sum(cpu - base.get(pid, 0.0) for pid, cpu in last.items())
            for base, last in zip(self.baseline, self.last, strict=True)
        )
        return gunicorn, postgres


def _gunicorn_pids(server: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [server.pid, *map(int, children)]


def _backend_pids(name: str) -> list[int]:
    """The PostgreSQL backends of one server: each server's libpq connections carry
    application_name bench-<name> (PGAPPNAME, set when it starts)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [f"bench-{name}"],
        )
        return [row[0] for row in cursor.fetchall()]


# --- the load -----------------------------------------------------------------------------


async def _connection_loop(
    port: int, keys: list[str], cursor: list[int], deadline: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            key = keys[cursor[0] % len(keys)]
            cursor[0] += 1
            request = (
                f"POST {HEARTBEAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                errors[0] += 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def _load(port: int, keys: list[str], connections: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds
    cursor = [0]
    await asyncio.gather(
        *(_connection_loop(port, keys, cursor, deadline, latencies, errors) for _ in range(connections))
    )
    return latencies, errors[0]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def measure_run(
    name: str, server: subprocess.Popen[bytes], keys: list[str], connections: int, seconds: float
) -> Run:
    port = PORTS[name]
    asyncio.run(_load(port, keys, connections, WARMUP_SECONDS))  # opens every worker's connection
    sampler = CpuSampler(name, server)
    sampler.start()
    started = time.monotonic()
    latencies, errors = asyncio.run(_load(port, keys, connections, seconds))
    elapsed = time.monotonic() - started
    gunicorn_cpu_s, postgres_cpu_s = sampler.used()
    return Run(
        server=name,
        connections=connections,
        heartbeats=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=_percentile(latencies, 0.5),
        p99_ms=_percentile(latencies, 0.99),
        gunicorn_cpu_s=gunicorn_cpu_s,
        postgres_cpu_s=postgres_cpu_s,
    )


def _wait_until_up(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g}s")


# --- the report ---------------------------------------------------------------------------


def render(
    results: dict[tuple[str, int], Series],
    *,
    agents: int,
    trials: int,
    seconds: float,
    workers: int,
    load: str,
) -> str:
    lines = [
        HEARTBEAT_MARKERS[0],
        "## Heartbeats against the floor app",
        "",
        f"{agents:,} agents (90 % platform, 10 % tenant), round robin; gunicorn sync, {workers} workers, "
        f"for both; closed-loop asyncio client; {trials} alternating trials of {seconds:g} s per connection "
        f"count, medians. Load average before the run: {load} (2 cores shared with other work: the ratio, "
        "measured in the same run, is the figure to compare).",
        "",
        "| server | connections | heartbeats/s | p50 ms | p99 ms | gunicorn CPU ms/beat "
        "| PostgreSQL CPU ms/beat | fleet at 30 s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    connection_counts = sorted({c for _, c in results})
    for connections in connection_counts:
        for name in ("project", "floor"):
            series = results[(name, connections)]
            lines.append(
                f"| {name} | {connections} | {series.median('rate'):,.0f} | {series.median('p50_ms'):.1f} "
                f"| {series.median('p99_ms'):.1f} | {series.median('gunicorn_ms_per_beat'):.2f} "
                f"| {series.median('postgres_ms_per_beat'):.2f} "
                f"| {series.median('rate') * HEARTBEAT_INTERVAL_SECONDS:,.0f} "
                f"| {sum(run.errors for run in series.runs)} |"
            )
    lines.append("")
    for connections in connection_counts:
        project, floor = results[("project", connections)], results[("floor", connections)]
        ratios = [p.rate / f.rate for p, f in zip(project.runs, floor.runs, strict=True)]
        ratio = statistics.median(ratios)
        verdict = ""
        if connections == 64:
            met = ratio >= RATIO_TARGET and project.median("p99_ms") <= P99_TARGET_MS
            target = f"target >= {RATIO_TARGET:g}x and p99 <= {P99_TARGET_MS:g} ms"
            verdict = f" ({target}: {'met' if met else 'MISSED'})"
        lines.append(
            f"- {connections} connections: project / floor = {ratio:.2f}x "
            f"(per trial: {', '.join(f'{r:.2f}' for r in ratios)}){verdict}"
        )
    lines.append(HEARTBEAT_MARKERS[1])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (the README's 3)")
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.agents < 1 or args.trials < 1 or args.seconds <= 0 or min(args.connections) < 1:
        parser.error("--agents, --trials, --connections must be at least 1 and --seconds positive")

    from bench.run import _setup_django

    _setup_django()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        parser.error("benchmarks run on PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    keys = fleet_create(args.agents)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    servers = {name: server_start(name, args.workers, args.worker_class) for name in PORTS}
    results: dict[tuple[str, int], Series] = {}
    try:
        for name in PORTS:
            _wait_until_up(PORTS[name])
        for connections in args.connections:
            for trial in range(args.trials):
                for name in PORTS:
                    run = measure_run(name, servers[name], keys, connections, args.seconds)
                    results.setdefault((name, connections), Series()).runs.append(run)
                    print(
                        f"{name:7} c={connections:3} trial {trial + 1}: {run.rate:7.0f}/s "
                        f"p50 {run.p50_ms:6.1f} "
                        f"p99 {run.p99_ms:6.1f} ms, cpu {run.gunicorn_ms_per_beat:.2f}+"
                        f"{run.postgres_ms_per_beat:.2f} ms/beat, errors {run.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server_stop(server)
    section = render(
        results, agents=args.agents, trials=args.trials, seconds=args.seconds, workers=args.workers, load=load
    )
    print(section)
    if args.out:
        section_write(args.out, section, HEARTBEAT_MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
