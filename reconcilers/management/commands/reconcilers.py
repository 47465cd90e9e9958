"""`manage.py reconcilers`: every controller with enabled, interval, dry_run, last run and outcome."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from reconcilers.selectors import configs_effective, last_runs


class Command(BaseCommand):
    help = "List the controllers with their schedule and last run."

    def handle(self, *args: Any, **options: Any) -> None:
        configs = configs_effective()
        last = last_runs(list(configs))
        header = ("name", "enabled", "interval", "dry_run", "last run", "outcome")
        rows = [header]
        for name, config in configs.items():
            run = last.get(name)
            outcome = "-" if run is None else run.outcome + (f" ({run.reason})" if run.reason else "")
            rows.append(
                (
                    name + ("" if config.configured else " (defaults)"),
                    "yes" if config.enabled else "no",
                    f"cron {config.crontab} ({config.timezone})"
                    if config.crontab
                    else f"{config.interval_seconds}s",
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
