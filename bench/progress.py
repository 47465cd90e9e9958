"""Progress of the long dev tools (`make bench`, `make stress`): a bar on a terminal, silence in logs.

A benchmark or the stress suite runs for minutes with little output; on a terminal a rich
progress bar (step, elapsed time, what runs now) says it is alive. A bar's redraws in a
CI log or a file are noise, so it shows only when stderr is a terminal and CI is unset;
the tools' own figures and lines are printed either way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

Advance = Callable[[str], None]  # finish one step; the text says what runs next


def progress_wanted(stream: TextIO | None = None) -> bool:
    """A bar helps a person at a terminal; in CI or a redirected log it would only add noise."""
    stream = stream or sys.stderr
    return stream.isatty() and not os.environ.get("CI")


@contextmanager
def progress_steps(
    title: str, total: int, *, first: str = "", stream: TextIO | None = None
) -> Iterator[Advance]:
    """A bar of `total` steps on stderr, or a no-op when `progress_wanted` says no. Yields
    `advance(next_text)`: one step done, `next_text` shown as what runs now."""
    if not progress_wanted(stream):
        yield lambda _next: None
        return
    console = Console(file=stream or sys.stderr)
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[now]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=total, now=first)

        def advance(next_text: str) -> None:
            bar.update(task, advance=1, now=next_text)

        yield advance
