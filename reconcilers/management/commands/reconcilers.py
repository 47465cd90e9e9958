"""`manage.py reconcilers`: every controller with enabled, interval, dry_run, last run and outcome."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from reconcilers import registry
from reconcilers.models import ReconcilerConfig, ReconcileRun
from reconcilers.runtime.runner import config_effective


class Command(BaseCommand):
    help = "List the controllers with their schedule and last run."

    def handle(self, *args: Any, **options: Any) -> None:
        names = registry.controller_names()
        configured = set(ReconcilerConfig.objects.filter(name__in=names).values_list("name", flat=True))
        last: dict[str, ReconcileRun] = {}
        # One query per controller through the (controller, started_at) index, never a scan.
        for name in names:
            run = ReconcileRun.objects.filter(controller=name).order_by("-started_at", "-id").first()
            if run is not None:
                last[name] = run
        header = ("name", "enabled", "interval", "dry_run", "last run", "outcome")
        rows = [header]
        for name in names:
            config = config_effective(registry.controller_get(name))
            run = last.get(name)
            outcome = "-" if run is None else run.outcome + (f" ({run.reason})" if run.reason else "")
            rows.append(
                (
                    name + ("" if name in configured else " (defaults)"),
                    "yes" if config.enabled else "no",
                    f"{config.interval_seconds}s",
                    "yes" if config.dry_run else "no",
                    run.started_at.strftime("%Y-%m-%d %H:%M:%S") if run else "never",
                    outcome,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            )
