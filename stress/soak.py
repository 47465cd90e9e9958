"""`python -m stress.soak` (`make soak`): the whole system under the agent simulator for a
long time, watching the long-lived processes for growth.

Started here, on loopback, as in production (docs/reliability.md, "Long-running health"):
a private redis-server (broker and locks), gunicorn with 2 workers, a Celery worker with
2 prefork children and task events on, one beat, `manage.py simulate` with a fleet of
agents (10 % crash mid-job), a `manage.py enqueue` every 10 s and another short command
every 30 s, every controller at a 2-5 s interval, and PROMETHEUS_MULTIPROC_DIR set for
every process as in the compose file (one directory).

Every `--sample-every` seconds it records the RSS of each long-lived process (gunicorn
master and workers, worker main and children, beat), the metric directory's file count
and size, the time of a /metrics scrape of the web and of the worker, PostgreSQL and
Redis connections. At the end it fits a line to each process's RSS after the warm-up and
fails (exit 1) when one grows faster than its bound, when the metric directory grew, when
a scrape took too long, or when run health is off (due runs, errors, tracebacks, 5xx).

The database in DATABASE_URL (or --pg-url) is migrated and its controller configs
changed; use a database of its own (default `controlplane_soak`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import redis

from stress.procs import REPO_ROOT, ProcessSet, RedisServer

MB = 1024 * 1024
INTERVALS = {  # seconds: short, so an hour of soak is many hours of a production tick rate
    "agent-health": 2,
    "job-recovery": 3,
    "queue-priority": 2,
    "token-cleanup": 4,
    "audit-retention": 5,
}
# Growth bounds after the warm-up, MB per hour of a linear fit (the acceptance).
BOUND_MB_PER_HOUR = {"web": 1.0, "beat": 1.0, "worker": 2.0}
SCRAPE_BOUND_SECONDS = 0.1
FILE_GROWTH_TOLERANCE = 0  # the directory's file count after the warm-up must not grow
MIN_DUE_FRACTION = 0.9
COMMANDS_IN_FLIGHT = 3
DOC_BEGIN = "<!-- soak:begin (written by make soak) -->"
DOC_END = "<!-- soak:end -->"
PLOT_NAME = "soak-rss.svg"
TITLE = "RSS change per process after the warm-up (MB), by minute of the soak"
# The worker main and each prefork child under tracemalloc, from the end of the warm-up on
# (tracing the start-up, every import, is slow and is not the growth looked for). Each
# process dumps its snapshots into its own folder: main/ and child-<pid>/.
TRACEMALLOC_WRAPPER = """
import os, sys, threading, time, tracemalloc
out = os.environ["SOAK_TRACEMALLOC_DIR"]
every = float(os.environ["SOAK_TRACEMALLOC_EVERY"])
def dump(folder):
    pid = os.getpid()
    os.makedirs(folder, exist_ok=True)
    time.sleep(float(os.environ["SOAK_TRACEMALLOC_AFTER"]))
    tracemalloc.start(int(os.environ.get("SOAK_TRACEMALLOC_FRAMES", "6")))
    n = 0
    while os.getpid() == pid:
        tracemalloc.take_snapshot().dump(os.path.join(folder, f"snap-{n:04d}.tracemalloc"))
        n += 1
        time.sleep(every)
from celery.signals import worker_process_init
@worker_process_init.connect
def trace_child(**_):
    threading.Thread(target=dump, args=(os.path.join(out, f"child-{os.getpid()}"),), daemon=True).start()
threading.Thread(target=dump, args=(os.path.join(out, "main"),), daemon=True).start()
from celery.__main__ import main
sys.argv[0] = "celery"
main()
"""


@dataclass
class Sample:
    t: float  # seconds since start
    rss: dict[str, float]  # role -> MB
    files: int
    dir_bytes: int
    scrape_web: float | None
    scrape_worker: float | None
    scrape_cpu: float  # CPU seconds to aggregate the directory once, as a scrape does
    pg_connections: int
    redis_clients: int
    commands: int
    load1: float


@dataclass
class Commands:
    """Short-lived manage.py commands run against the running system, as an operator or a
    cron job would, each with PROMETHEUS_MULTIPROC_DIR set."""

    procs: ProcessSet
    enqueue_every: float
    other_every: float
    stop: threading.Event = field(default_factory=threading.Event)
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: list[str] = field(default_factory=list)

    def run(self) -> None:
        """On a fixed cadence, whatever each command takes: up to IN_FLIGHT at a time, so a
        slow machine runs them late rather than fewer of them."""
        others = [["reconcilers"], ["reconcile", "agent-health", "--dry-run", "--json"], ["check"]]
        next_other = time.monotonic() + self.other_every
        i = 0
        with ThreadPoolExecutor(max_workers=COMMANDS_IN_FLIGHT) as pool:
            while not self.stop.wait(self.enqueue_every):
                pool.submit(
                    self._one, ["enqueue", "soak", "--create-tenant", "--plan", "team", "--count", "5"]
                )
                if time.monotonic() >= next_other:
                    pool.submit(self._one, others[i % len(others)])
                    i += 1
                    next_other += self.other_every
            pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, args: list[str]) -> None:
        if self.stop.is_set():
            return
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO_ROOT,
            env=dict(self.procs.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
        with self.lock:
            self.count += 1
        if done.returncode not in (0,):
            self.failed.append(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.decode()[-300:]}")


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and r² of the least-squares line through (xs, ys)."""
    if len(xs) < 3:
        return 0.0, 0.0
    slope, intercept = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, (1 - residual / total) if total else 1.0


def roles(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """RSS in MB of every long-lived process, by role; children found afresh each time (a
    replaced child gets the same role name)."""
    rss: dict[str, float] = {}
    for role, parent in procs.items():
        with contextlib.suppress(psutil.Error):
            rss[role] = parent.memory_info().rss / MB
            if role in ("web-master", "worker-main"):
                kids = sorted(parent.children(), key=lambda p: p.pid)
                prefix = "web-worker" if role == "web-master" else "worker-child"
                for n, kid in enumerate(kids, 1):
                    with contextlib.suppress(psutil.Error):
                        rss[f"{prefix}-{n}"] = kid.memory_info().rss / MB
    return rss


def group_of(role: str) -> str:
    if role.startswith("web"):
        return "web"
    if role.startswith("beat"):
        return "beat"
    return "worker"


def timed_get(client: httpx.Client, url: str) -> float | None:
    start = time.perf_counter()
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return None
    return time.perf_counter() - start if response.status_code == 200 else None


def aggregate_cpu_seconds(directory: Path) -> float:
    """CPU time of one aggregation of the metric directory, in this process: what a scrape
    costs, apart from waiting for a busy server or a CPU (the HTTP timings include both)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    start = time.process_time()
    generate_latest(registry)
    return time.process_time() - start


def count_5xx(client: httpx.Client, url: str) -> int:
    """5xx responses the web has answered, from its own django_prometheus counters."""
    try:
        text = client.get(url).text
    except httpx.HTTPError:
        return -1
    total = 0.0
    for line in text.splitlines():
        if line.startswith("django_http_responses_total_by_status_total{") and re.search(
            r'status="5\d\d"', line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def svg_plot(samples: list[Sample], warmup: float, path: Path) -> None:
    """Each process's RSS change from its value at the end of the warm-up, over time: a
    plain SVG (no plotting library needed). Absolute sizes are in the table beside it;
    on a scale that holds them, a growth of 1 MB/h would be a flat line."""
    base: dict[str, float] = {}
    series: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for role, mb in s.rss.items():
            if s.t >= warmup:
                base.setdefault(role, mb)
    for s in samples:
        for role, mb in s.rss.items():
            if role in base and s.t >= warmup:
                series.setdefault(role, []).append((s.t / 60, mb - base[role]))
    width, height, left, right, top, bottom = 860, 420, 60, 190, 30, 45
    t_min = warmup / 60
    t_max = max(max((s.t for s in samples), default=1) / 60, t_min + 1)
    values = [mb for pts in series.values() for _, mb in pts] or [0.0]
    step = 0.5 if max(values) - min(values) <= 6 else 2.0
    y_min = math.floor(min(values) / step) * step
    y_max = math.ceil(max(values) / step) * step + step
    pw, ph = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + pw * (t - t_min) / (t_max - t_min)

    def y(mb: float) -> float:
        return top + ph * (1 - (mb - y_min) / ((y_max - y_min) or 1))

    colors = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#17becf",
    ]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">{TITLE}</text>',
    ]
    mb = y_min
    while mb <= y_max + 1e-9:
        stroke = "#999" if abs(mb) < 1e-9 else "#ddd"
        out.append(
            f'<line x1="{left}" y1="{y(mb):.1f}" x2="{left + pw}" y2="{y(mb):.1f}" stroke="{stroke}"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y(mb) + 4:.1f}" text-anchor="end">{mb:+.1f}</text>')
        mb += step
    t_step = max(1, int((t_max - t_min) // 6))
    for t in range(math.ceil(t_min), int(t_max) + 1, t_step):
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for n, (role, pts) in enumerate(sorted(series.items())):
        color = colors[n % len(colors)]
        d = " ".join(f"{x(t):.1f},{y(mb):.1f}" for t, mb in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{d}"/>')
        out.append(f'<rect x="{left + pw + 12}" y="{top + 16 * n}" width="12" height="3" fill="{color}"/>')
        out.append(f'<text x="{left + pw + 28}" y="{top + 16 * n + 5}">{role} ({base[role]:.0f} MB)</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


@dataclass
class Result:
    figures: dict[str, Any]
    growth: dict[str, tuple[float, float, float, float]]  # role -> (slope MB/h, r², first, last)
    violations: list[str]


def evaluate(
    samples: list[Sample],
    warmup: float,
    health: dict[str, Any],
    commands: Commands,
    tracebacks: dict[str, int],
) -> Result:
    after = [s for s in samples if s.t >= warmup]
    violations: list[str] = []
    growth: dict[str, tuple[float, float, float, float]] = {}
    all_roles = sorted({r for s in after for r in s.rss})
    for role in all_roles:
        pts = [(s.t / 3600, s.rss[role]) for s in after if role in s.rss]
        slope, r2 = linear_fit([p[0] for p in pts], [p[1] for p in pts])
        growth[role] = (slope, r2, pts[0][1] if pts else 0.0, pts[-1][1] if pts else 0.0)
        bound = BOUND_MB_PER_HOUR[group_of(role)]
        if slope > bound:
            violations.append(f"{role} grows {slope:.2f} MB/h after the warm-up (bound {bound} MB/h)")
    files_start = after[0].files if after else 0
    files_max = max((s.files for s in after), default=0)
    if files_max > files_start + FILE_GROWTH_TOLERANCE:
        violations.append(f"metric directory grew from {files_start} to {files_max} files after the warm-up")
    # The bound is on what a scrape costs (the CPU time of aggregating the directory, which
    # is what grows with it); the HTTP timings are reported too, but on a shared or busy
    # machine they mostly measure the wait for a free web worker or CPU.
    scrapes = {
        "web (HTTP)": [s.scrape_web for s in after if s.scrape_web is not None],
        "worker (HTTP)": [s.scrape_worker for s in after if s.scrape_worker is not None],
        "aggregation (CPU)": [s.scrape_cpu for s in after],
    }
    scrape_figures = {}
    for name, times in scrapes.items():
        if not times:
            violations.append(f"no successful {name} scrape after the warm-up")
            continue
        p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
        scrape_figures[name] = (statistics.median(times), p95, max(times))
        if name.startswith("aggregation") and p95 >= SCRAPE_BOUND_SECONDS:
            violations.append(f"aggregating the metric directory took {p95:.3f} s CPU at p95 (bound 0.1 s)")
    missed = [s.t for s in after if s.scrape_web is None or s.scrape_worker is None]
    if missed:
        violations.append(f"{len(missed)} failed scrapes after the warm-up")
    for name, due in health["due_fraction"].items():
        if due < MIN_DUE_FRACTION:
            violations.append(f"{name}: {due:.1%} of due runs succeeded (bound {MIN_DUE_FRACTION:.0%})")
    if health["errors"]:
        violations.append(f"error runs: {health['errors']}")
    if health["http_5xx"]:
        violations.append(f"{health['http_5xx']} 5xx answers from the web")
    if any(tracebacks.values()):
        violations.append(f"tracebacks in logs: {tracebacks}")
    if commands.failed:
        violations.append(f"{len(commands.failed)} commands failed, first: {commands.failed[0]}")
    pg = [s.pg_connections for s in after]
    rc = [s.redis_clients for s in after]
    figures = {
        "samples": len(samples),
        "commands": commands.count,
        "files": (files_start, files_max, after[-1].files if after else 0),
        "dir_mb": (after[0].dir_bytes / MB, after[-1].dir_bytes / MB) if after else (0, 0),
        "scrape": scrape_figures,
        "pg_connections": (min(pg, default=0), max(pg, default=0)),
        "redis_clients": (min(rc, default=0), max(rc, default=0)),
        "load1": (
            min(s.load1 for s in samples),
            statistics.fmean(s.load1 for s in samples),
            max(s.load1 for s in samples),
        ),
    }
    return Result(figures, growth, violations)


def pg_connections(pg: Any, db_name: str) -> int:
    if pg is None:
        return 0
    row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db_name,)).fetchone()
    return int(row[0]) if row else 0


def run_health(since: datetime, until: datetime, db_url: str) -> dict[str, Any]:
    """Per controller: successful real runs against the runs due in the window."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT controller, outcome, count(*) FROM reconcilers_reconcilerun "
            "WHERE started_at >= %s AND started_at < %s AND NOT forced GROUP BY controller, outcome",
            (since, until),
        ).fetchall()
    by: dict[str, dict[str, int]] = {}
    for controller, outcome, n in rows:
        by.setdefault(controller, {})[outcome] = n
    window = (until - since).total_seconds()
    due_fraction = {}
    for name, interval in INTERVALS.items():
        due = window / interval
        due_fraction[name] = min(1.0, by.get(name, {}).get("success", 0) / due)
    errors = {name: counts["error"] for name, counts in by.items() if counts.get("error")}
    return {"runs": by, "due_fraction": due_fraction, "errors": errors}


def tracemalloc_report(trace_dir: Path, top: int = 15) -> str:
    """What each traced worker process (main/, child-<pid>/) allocated and still held between
    its first snapshot (end of the warm-up) and its last, by line and by call stack."""
    folders = sorted(p for p in trace_dir.iterdir() if p.is_dir()) if trace_dir.is_dir() else []
    return "\n\n".join(_tracemalloc_diff(folder, top) for folder in folders) or "tracemalloc: no snapshots"


def _tracemalloc_diff(snap_dir: Path, top: int) -> str:
    import tracemalloc

    snaps = sorted(snap_dir.glob("snap-*.tracemalloc"))
    if len(snaps) < 2:
        return f"tracemalloc, worker {snap_dir.name}: fewer than two snapshots"
    first = tracemalloc.Snapshot.load(str(snaps[0]))
    last = tracemalloc.Snapshot.load(str(snaps[-1]))
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ]
    first, last = first.filter_traces(ignore), last.filter_traces(ignore)
    lines = [f"tracemalloc, worker {snap_dir.name}, {snaps[0].name} -> {snaps[-1].name}:"]
    for kind in ("lineno", "traceback"):
        stats = last.compare_to(first, kind)
        lines.append(f"-- by {kind}, total diff {sum(s.size_diff for s in stats) / 1024:.1f} KiB")
        for stat in stats[:top]:
            lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
            frames = stat.traceback.format()[-8:] if kind == "traceback" else stat.traceback.format()[:1]
            lines += ["    " + f.strip() for f in frames if f.strip()]
    return "\n".join(lines)


def doc_section(
    result: Result, health: dict[str, Any], args: argparse.Namespace, started: datetime, ok: bool
) -> str:
    f = result.figures
    lines = [
        DOC_BEGIN,
        f"Last run: {started:%Y-%m-%d %H:%M} UTC, {args.duration / 60:.0f} minutes (warm-up "
        f"{args.warmup / 60:.0f}), {args.agents} simulated agents ({args.crash_fraction:.0%} crash), "
        f"controllers at 2-5 s, a sample every {args.sample_every:.0f} s. Result: "
        f"**{'passed' if ok else 'FAILED'}**. Machine load (1-minute average) "
        f"{f['load1'][0]:.1f} to {f['load1'][2]:.1f}, mean {f['load1'][1]:.1f}, on 2 cores shared with "
        "other test runs.",
        "",
        "| process | RSS after warm-up (MB) | at the end (MB) | growth (MB/h, linear fit) | r² "
        "| bound (MB/h) |",
        "|---|---|---|---|---|---|",
    ]
    for role, (slope, r2, first, last) in sorted(result.growth.items()):
        lines.append(
            f"| {role} | {first:.1f} | {last:.1f} | {slope:+.2f} | {r2:.2f} "
            f"| {BOUND_MB_PER_HOUR[group_of(role)]} |"
        )
    files = f["files"]
    lines += [
        "",
        "| figure | value |",
        "|---|---|",
        "| short-lived `manage.py` commands run (enqueue, reconcile --dry-run, reconcilers, check) "
        f"| {f['commands']} |",
        f"| metric directory files: after warm-up / max / end | {files[0]} / {files[1]} / {files[2]} |",
        f"| metric directory size: after warm-up / end (MB) | {f['dir_mb'][0]:.1f} / {f['dir_mb'][1]:.1f} |",
    ]
    for name, (median, p95, worst) in f["scrape"].items():
        lines.append(f"| scrape, {name}: median / p95 / max (s) | {median:.3f} / {p95:.3f} / {worst:.3f} |")
    lines += [
        "| PostgreSQL connections after warm-up: min / max "
        f"| {f['pg_connections'][0]} / {f['pg_connections'][1]} |",
        f"| Redis clients after warm-up: min / max | {f['redis_clients'][0]} / {f['redis_clients'][1]} |",
        "| successful runs / due runs | "
        + ", ".join(f"{n} {v:.1%}" for n, v in health["due_fraction"].items())
        + " |",
        f"| error runs, 5xx answers | {sum(health['errors'].values())}, {health['http_5xx']} |",
        "",
        f"![RSS per process over the soak]({PLOT_NAME})",
        "",
    ]
    if result.violations:
        lines += ["Violations:", ""] + [f"- {v}" for v in result.violations] + [""]
    lines.append(DOC_END)
    return "\n".join(lines)


def doc_write(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else "# Reliability\n"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        text = head + section + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Long-running health (`make soak`)\n\n" + section + "\n"
    doc.write_text(text)


def configure(env: dict[str, str]) -> None:
    """Migrate and put every controller on its short interval (through config_update, so
    validated, audited and the beat rows synced), in a short-lived command."""
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=REPO_ROOT, env=env, check=True
    )
    code = (
        "from reconcilers.services import config_update\n"
        f"for name, interval in {INTERVALS!r}.items():\n"
        "    config_update(name, {'enabled': True, 'dry_run': False, 'interval_seconds': interval,"
        " 'run_timeout_seconds': interval}, actor='user:soak')\n"
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO_ROOT, env=env, check=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 minutes)")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds left out of the fits")
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument(
        "--agents", type=int, default=300, help="simulated agents (each polls for a job every 0.5 s)"
    )
    parser.add_argument("--crash-fraction", type=float, default=0.1)
    parser.add_argument("--job-rate", type=float, default=0.5, help="the simulator's own jobs per second")
    parser.add_argument("--enqueue-every", type=float, default=10.0)
    parser.add_argument("--other-command-every", type=float, default=30.0)
    parser.add_argument(
        "--port-base", type=int, default=16480, help="web, worker metrics and Redis: base..base+2"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("SOAK_PG_URL", "postgres://postgres@127.0.0.1:5432/controlplane_soak"),
    )
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "reliability.md")
    parser.add_argument("--no-doc", action="store_true", help="print the figures only")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the allocations of the worker main and its children (a probe: inflates their RSS)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    started_at = datetime.now(UTC)
    log_dir = REPO_ROOT / "var" / "soak" / started_at.strftime("%Y%m%dT%H%M%SZ")
    metrics_dir = log_dir / "metrics"
    metrics_dir.mkdir(parents=True)
    web_port, worker_metrics_port, redis_port = args.port_base, args.port_base + 1, args.port_base + 2
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST",)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "DEBUG": "0",  # production settings: DEBUG keeps every query in memory
            "SECRET_KEY": "soak-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "DATABASE_URL": args.pg_url,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/1",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "RECONCILERS_LOCK_PREFIX": "cpsoak:lock:",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "WORKER_METRICS_PORT": str(worker_metrics_port),
            "AGENT_HEARTBEAT_INTERVAL_SECONDS": "10",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    import psycopg

    is_pg = args.pg_url.startswith("postgres")  # SQLite works for a probe: no connection or run figures
    if is_pg:
        base, _, name = args.pg_url.rpartition("/")
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    redis_server = RedisServer(redis_port, log_dir)
    procs = ProcessSet(log_dir, env)
    commands = Commands(procs, args.enqueue_every, args.other_command_every)
    samples: list[Sample] = []
    py = sys.executable
    try:
        redis_server.start()
        configure(env)
        web = procs.start(
            "web",
            [
                py,
                "-m",
                "gunicorn",
                "controlplane.wsgi",
                "--config",
                "python:controlplane.gunicorn_conf",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{web_port}",
            ],
        )
        worker_argv = [
            "-A",
            "controlplane",
            "worker",
            "-Q",
            "reconcilers,celery",
            "--concurrency",
            "2",
            "-E",
            "--loglevel",
            "WARNING",
            "-n",
            "soak@%h",
        ]
        extra: dict[str, str] = {}
        if args.tracemalloc:
            snap_dir = log_dir / "tracemalloc"
            snap_dir.mkdir()
            extra = {
                "SOAK_TRACEMALLOC_DIR": str(snap_dir),
                "SOAK_TRACEMALLOC_EVERY": str(args.sample_every * 6),
                "SOAK_TRACEMALLOC_AFTER": str(args.warmup),
            }
            worker = procs.start("worker", [py, "-c", TRACEMALLOC_WRAPPER, *worker_argv], **extra)
        else:
            worker = procs.start("worker", [py, "-m", "celery", *worker_argv])
        beat = procs.celery_beat("beat")
        client = httpx.Client(timeout=10)
        base_url = f"http://127.0.0.1:{web_port}"
        deadline = time.monotonic() + 120
        while timed_get(client, f"{base_url}/healthz") is None:
            if time.monotonic() > deadline or not web.alive():
                raise SystemExit("soak: the web server did not come up")
            time.sleep(0.5)
        while timed_get(client, f"http://127.0.0.1:{worker_metrics_port}/metrics") is None:
            if time.monotonic() > deadline + 60 or not worker.alive():
                raise SystemExit("soak: the worker's metrics port did not come up")
            time.sleep(0.5)
        sim_args = [
            "simulate",
            "--base-url",
            base_url,
            "--issue-token",
            "--agents",
            str(args.agents),
            "--crash-fraction",
            str(args.crash_fraction),
            "--rate",
            str(args.job_rate),
            "--duration",
            str(min(3600.0, args.duration + 30)),
        ]
        procs.manage("simulator", *sim_args)
        thread = threading.Thread(target=commands.run, daemon=True)
        thread.start()
        watched = {
            "web-master": psutil.Process(web.pid),
            "worker-main": psutil.Process(worker.pid),
            "beat": psutil.Process(beat.pid),
        }
        rconn = redis.Redis(port=redis_port)
        pg = psycopg.connect(args.pg_url, autocommit=True) if is_pg else None
        db_name = args.pg_url.rpartition("/")[2]
        t0 = time.monotonic()
        since = datetime.now(UTC)
        warm_since: datetime | None = None
        print(f"soak: {args.duration:.0f} s, logs in {log_dir}", flush=True)
        while (elapsed := time.monotonic() - t0) < args.duration:
            if warm_since is None and elapsed >= args.warmup:
                warm_since = datetime.now(UTC)
            dead = [p.label for p in procs.procs if not p.alive() and p.label != "simulator"]
            if dead:
                raise SystemExit(f"soak: processes died: {dead}")
            files = list(metrics_dir.iterdir())
            sample = Sample(
                t=elapsed,
                rss=roles(watched),
                files=len(files),
                dir_bytes=sum(f.stat().st_size for f in files if f.is_file()),
                scrape_web=timed_get(client, f"{base_url}/metrics"),
                scrape_worker=timed_get(client, f"http://127.0.0.1:{worker_metrics_port}/metrics"),
                scrape_cpu=aggregate_cpu_seconds(metrics_dir),
                pg_connections=pg_connections(pg, db_name),
                redis_clients=int(rconn.info("clients")["connected_clients"]),
                commands=commands.count,
                load1=os.getloadavg()[0],
            )
            samples.append(sample)
            if len(samples) % 6 == 1:
                print(
                    f"soak {elapsed / 60:5.1f} min: "
                    + " ".join(f"{r}={mb:.1f}" for r, mb in sorted(sample.rss.items()))
                    + f" files={sample.files} scrape={sample.scrape_web or -1:.3f}"
                    f"/{sample.scrape_worker or -1:.3f}"
                    f" pg={sample.pg_connections} redis={sample.redis_clients} commands={sample.commands}"
                    f" load={sample.load1:.1f}",
                    flush=True,
                )
            time.sleep(max(0.0, args.sample_every - (time.monotonic() - t0 - elapsed)))
        until = datetime.now(UTC)
        commands.stop.set()
        thread.join(timeout=150)
        health = (
            run_health(warm_since or since, until, args.pg_url)
            if is_pg
            else {"runs": {}, "due_fraction": {}, "errors": {}}
        )
        health["http_5xx"] = count_5xx(client, f"{base_url}/metrics")
        if pg is not None:
            pg.close()
    finally:
        commands.stop.set()
        codes = procs.stop_all()
        redis_server.stop()
    tracebacks = {p.label: p.log_text().count("Traceback (most recent call last)") for p in procs.procs}
    result = evaluate(samples, args.warmup, health, commands, tracebacks)
    with open(log_dir / "samples.csv", "w", newline="") as fh:
        roles_all = sorted({r for s in samples for r in s.rss})
        writer = csv.writer(fh)
        writer.writerow(
            [
                "t",
                *roles_all,
                "files",
                "dir_bytes",
                "scrape_web",
                "scrape_worker",
                "pg",
                "redis",
                "commands",
                "load1",
            ]
        )
        for s in samples:
            writer.writerow(
                [
                    f"{s.t:.1f}",
                    *(f"{s.rss.get(r, 0):.2f}" for r in roles_all),
                    s.files,
                    s.dir_bytes,
                    s.scrape_web,
                    s.scrape_worker,
                    s.pg_connections,
                    s.redis_clients,
                    s.commands,
                    s.load1,
                ]
            )
    (log_dir / "result.json").write_text(
        json.dumps(
            {
                "figures": result.figures,
                "growth": result.growth,
                "health": health,
                "violations": result.violations,
                "exit_codes": codes,
                "tracebacks": tracebacks,
            },
            indent=2,
            default=str,
        )
    )
    ok = not result.violations
    svg_plot(samples, args.warmup, log_dir / PLOT_NAME)
    if args.tracemalloc:
        report = tracemalloc_report(log_dir / "tracemalloc")
        (log_dir / "tracemalloc.txt").write_text(report)
        print(report)
    if not args.no_doc:
        svg_plot(samples, args.warmup, args.doc.parent / PLOT_NAME)
        doc_write(args.doc, doc_section(result, health, args, started_at, ok))
    print(json.dumps(result.figures, default=str))
    for role, (slope, r2, first, last) in sorted(result.growth.items()):
        print(f"  {role:14s} {first:7.1f} -> {last:7.1f} MB  {slope:+6.2f} MB/h  r2 {r2:.2f}")
    for v in result.violations:
        print(f"  VIOLATION: {v}")
    print(f"soak: {'passed' if ok else 'FAILED'}; logs and samples.csv in {log_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
