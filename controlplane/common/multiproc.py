"""Which processes write prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR).

In multiprocess mode every process that loads Django writes its own five `.db` files (one
per metric type and gauge mode), and nothing removes them after the process ends. For the
long-lived processes that is the point: their values add up in a scrape. A short-lived
`manage.py` command (enqueue, migrate, reconcile, shell...) would leave its files behind at
every run, so the directory, and the time and memory of every scrape, would grow without
bound. Such a command records its metrics in memory only: nobody scrapes it, and its runs
are in the run history (design.md §4.12).

This module imports nothing from prometheus_client: prometheus_client picks its value
class (files or memory) when first imported, so the choice has to be made before that.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The manage.py commands that run for the life of a deployment and are scraped through the
# directory they share; every other command is short-lived.
LONG_LIVED_COMMANDS = frozenset({"runcontrollers", "runserver"})


def command_records_multiprocess(argv: Sequence[str]) -> bool:
    """Whether `manage.py <argv[1]>` writes multiprocess metric files."""
    return len(argv) > 1 and argv[1] in LONG_LIVED_COMMANDS


def multiprocess_scope_for_command(
    argv: Sequence[str], environ: MutableMapping[str, str] | None = None
) -> None:
    """Called by manage.py before Django starts: a short-lived command runs without
    PROMETHEUS_MULTIPROC_DIR (so with in-memory metrics). Its own child processes inherit
    that, which is what they need too."""
    env = os.environ if environ is None else environ
    if not command_records_multiprocess(argv):
        env.pop(MULTIPROC_ENV, None)
