"""One measured controller run in a fresh process: `python -m bench.trial <controller>`.

A separate process so that peak RSS (ru_maxrss) belongs to this run alone. Prints one
JSON object: wall time, steps, peak and baseline RSS.

Imports of Django models sit inside functions: this tool runs django.setup() first.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    from bench.generate import bench_configure
    from bench.walks import use_walk
    from reconcilers.services import run_controller

    use_walk(os.environ.get("BENCH_WALK", "keyset"))

    name = sys.argv[1]
    bench_configure(name)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    summary = run_controller(name, dry_run=False, force=True, trigger="bench")
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "controller": name,
                "outcome": summary.outcome,
                "reason": summary.reason,
                "steps": dict(summary.steps),
                "items": summary.items,
                "wall_s": wall,
                "peak_rss_mb": peak_kb / 1024,
                "baseline_rss_mb": baseline_kb / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
