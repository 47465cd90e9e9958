"""`manage.py reconcile <name> [--dry-run] [--force] [--ignore-brake] [--json]`: one run (design.md §8).

Exit 0 for success or skipped, 1 for error, 2 for usage errors (an unknown name lists the
valid ones). With --json, stdout carries exactly one JSON object; logs go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reconcilers.registry import controller_names
from reconcilers.services import run_controller

EXIT_ERROR = 1
EXIT_USAGE = 2


class Command(BaseCommand):
    help = "Run one reconcile of a controller through the full runner (lock, fencing, history, metrics)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="controller name, e.g. agent-health")
        parser.add_argument(
            "--dry-run", action="store_true", help="change nothing (default: the config's dry_run flag)"
        )
        parser.add_argument(
            "--force", action="store_true", help="bypass too_soon, disabled and paused (never the lock)"
        )
        parser.add_argument("--ignore-brake", action="store_true", help="override the safety brake once")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        names = controller_names()
        if name not in names:
            raise CommandError(
                f"unknown controller {name!r}; valid names: {', '.join(names) or '(none registered)'}",
                returncode=EXIT_USAGE,
            )
        summary = run_controller(
            name,
            dry_run=True if options["dry_run"] else None,
            force=options["force"],
            ignore_brake=options["ignore_brake"],
            trigger="cli",
        )
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_json(), sort_keys=False))
        else:
            self.stdout.write(summary.describe())
        if summary.outcome == "error":
            if summary.error_text and not options["json"]:
                self.stderr.write(summary.error_text)
            sys.exit(EXIT_ERROR)
