"""Subprocess entry for the runtime tests: install the test controllers, then run a mode.

python -m tests.runtime.proc_entry reconcile <name> <start_at_unix> [--force]
python -m tests.runtime.proc_entry takeover <name> <period_s> <deadline_s>
python -m tests.runtime.proc_entry manage <manage.py arguments...>
python -m tests.runtime.proc_entry celery <celery worker arguments...>

A subprocess also has SlowPurge, which the in-process fixtures leave out.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

import django

django.setup()

from reconcilers.testing import controllers_installed  # noqa: E402
from tests.runtime.controllers import TEST_CONTROLLERS, SlowPurge  # noqa: E402


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    with controllers_installed(*TEST_CONTROLLERS, SlowPurge):
        if mode == "reconcile":
            from reconcilers.services import run_controller

            time.sleep(max(0.0, float(rest[1]) - time.time()))
            summary = run_controller(rest[0], force="--force" in rest, trigger="test")
            print(json.dumps(summary.as_dict()), flush=True)
            return 0
        if mode == "takeover":
            # Ready, then once another process's run of <name> is running: forced runs every
            # <period> s (as ticks would, past that holder's anchor) until one succeeds or
            # <deadline> s pass; one JSON line per run.
            from reconcilers.models import ReconcileRun, RunOutcome
            from reconcilers.services import run_controller

            period, deadline = float(rest[1]), time.monotonic() + float(rest[2])
            print("ready", flush=True)
            running = ReconcileRun.objects.filter(controller=rest[0], outcome=RunOutcome.RUNNING)
            while not running.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            while time.monotonic() < deadline:
                summary = run_controller(rest[0], force=True, trigger="test")
                print(json.dumps({**summary.as_dict(), "at": time.time()}), flush=True)
                if summary.outcome == "success":
                    return 0
                time.sleep(period)
            return 1
        if mode == "manage":
            from django.core.management import execute_from_command_line

            execute_from_command_line(["manage.py", *rest])
            return 0
        if mode == "celery":
            from controlplane.celery import app
            from reconcilers.tasks import tasks_register

            tasks_register()
            app.worker_main(rest)
            return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
