#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    # Before anything imports prometheus_client: a short-lived command must not leave its
    # metric files behind in PROMETHEUS_MULTIPROC_DIR.
    from controlplane.common.multiproc import multiprocess_scope_for_command

    multiprocess_scope_for_command(sys.argv)
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad environment variable is an operator error, not a crash: say which one.
        sys.stderr.write(f"configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
