"""`manage.py check --database default`: controller config rows that fail their schema.

A database check: Django runs it only when asked for databases, so a plain `check` (and
every management command's start-up) stays free of queries. `migrate` runs checks too,
before the tables exist: missing tables are not an error here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Warning
from django.db import DatabaseError

from reconcilers.selectors import configs_effective


def reconciler_configs_check(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not databases or "default" not in databases:
        return []
    try:
        configs = configs_effective()
    except DatabaseError:  # not migrated yet
        return []
    messages: list[CheckMessage] = []
    for name, config in configs.items():
        if not config.valid:
            messages.append(
                Error(
                    f"{name}: config row is invalid, every run is refused (invalid_config): {config.error}",
                    hint="Fix the params in the admin (Reconcilers) or with config_update; "
                    "deleting the row restores the defaults.",
                    obj=name,
                    id="reconcilers.E001",
                )
            )
        for conflict in config.conflicts:
            messages.append(
                Warning(
                    f"{name}: {conflict}",
                    hint="The controller keeps running; a save that keeps this is refused.",
                    obj=name,
                    id="reconcilers.W001",
                )
            )
    return messages
