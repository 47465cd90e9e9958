"""`python -m stress [scenario ...]`: the fault and load suite at full length (`make stress`).

Needs DATABASE_URL pointing at a PostgreSQL database the suite may drop and recreate (its
name must contain "stress"), and redis-server on PATH. Prints every scenario's figures
and exits 0 only if every invariant held.

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.progress import progress_steps

SCENARIOS = ("exactly-once", "kill", "outage", "heartbeat", "failover")


def database_recreate(url: str) -> None:
    """Drop and create the suite's own database (refuses any name without 'stress')."""
    import psycopg
    from psycopg import sql

    from controlplane.settings import DATABASES

    cfg = DATABASES["default"]
    name = cfg["NAME"]
    if "postgresql" not in cfg["ENGINE"]:
        raise SystemExit(f"make stress needs PostgreSQL, DATABASE_URL is {url!r}")
    if "stress" not in name:
        raise SystemExit(f"refusing to recreate database {name!r}: its name must contain 'stress'")
    with psycopg.connect(
        host=cfg["HOST"] or "127.0.0.1",
        port=cfg["PORT"] or 5432,
        user=cfg["USER"] or "postgres",
        password=cfg.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _scenario(module: str) -> Any:
    return importlib.import_module(f"stress.{module}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")  # runs every scenario's finally


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's duration")
    parser.add_argument("--log-dir", default=None, help="where process logs go (default var/stress/<time>)")
    args = parser.parse_args(argv)
    args.scenarios = args.scenarios or list(SCENARIOS)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; valid: {', '.join(SCENARIOS)}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("DEBUG", "1")
    signal.signal(signal.SIGTERM, _terminate)

    url = os.environ.get("DATABASE_URL", "")
    database_recreate(url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)

    from stress.base import StressEnv

    log_dir = Path(args.log_dir or f"var/stress/{datetime.now(UTC):%Y%m%dT%H%M%SZ}").resolve()
    env = StressEnv(log_dir=log_dir)
    scale = args.scale
    runners = {
        "exactly-once": lambda: _scenario("exactly_once").run(env, duration=60 * scale),
        "kill": lambda: _scenario("kill").run(env),
        "outage": lambda: _scenario("outage").run(env, outage_seconds=10, settle_seconds=10 * scale),
        "heartbeat": lambda: _scenario("heartbeat_race").run(env, duration=60 * scale),
        "failover": lambda: _scenario("failover").run(env, settle_seconds=10 * scale),
    }
    print(f"stress suite: logs in {log_dir}", flush=True)
    started = time.monotonic()
    reports = []
    upcoming = [*args.scenarios[1:], "done"]
    with progress_steps("make stress", len(args.scenarios), first=args.scenarios[0]) as advance:
        for name, following in zip(args.scenarios, upcoming, strict=True):
            t0 = time.monotonic()
            report = runners[name]()
            report.figures["scenario_wall_s"] = round(time.monotonic() - t0, 1)
            reports.append(report)
            print(report.render(), flush=True)
            advance(following)
    failed = [r.name for r in reports if not r.ok]
    print(
        f"== stress suite: {len(reports) - len(failed)} of {len(reports)} scenarios held every invariant "
        f"in {time.monotonic() - started:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
