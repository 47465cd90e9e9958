"""`manage.py runcontrollers`: run every controller in-process, each in its own thread, until SIGINT/SIGTERM.

For single-node installs and tests without a broker; set RECONCILERS_LOCK_BACKEND=database
to run without Redis as well.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reconcilers.registry import UnknownControllerError, controller_get, controller_names
from reconcilers.runtime.manager import JITTER_FRACTION, Manager


class Command(BaseCommand):
    help = "Run every controller in its own thread at its interval (first run at start) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            action="append",
            default=[],
            metavar="NAME",
            help="run only this controller (repeatable)",
        )
        parser.add_argument(
            "--jitter",
            type=float,
            default=JITTER_FRACTION,
            help="random extra wait, as a fraction of the interval",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = options["only"] or controller_names()
        manager = Manager(jitter_fraction=options["jitter"])
        try:
            for name in names:
                manager.register(controller_get(name))
        except (UnknownControllerError, ValueError) as exc:
            raise CommandError(str(exc), returncode=2) from exc
        if not manager.controller_count():
            raise CommandError("no controllers registered", returncode=2)

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self.stderr.write(f"received {signal.Signals(signum).name}, stopping after the current runs")
            manager.request_stop()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        manager.start()
        self.stderr.write(f"running {', '.join(manager.controller_names())}; Ctrl-C to stop")
        while not manager.wait(timeout=1.0):
            pass
        clean = manager.stop()
        self.stderr.write("stopped" if clean else "stopped (some runs were still finishing)")
