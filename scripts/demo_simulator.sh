#!/usr/bin/env bash
# The demo's traffic: once the web server and the broker answer, run every controller once
# through Celery (a daily controller would otherwise first run a day later), then drive a
# simulated fleet against the web server for as long as the demo runs.
set -euo pipefail
base="http://127.0.0.1:${DEMO_WEB_PORT}"
python scripts/demo_wait.py --url "$base/healthz" --redis --timeout 120
python manage.py shell -c "
from reconcilers.registry import controller_names
from reconcilers.tasks import reconcile_enqueue
for name in controller_names():
    reconcile_enqueue(name)
print('demo: queued one run of each controller:', ', '.join(controller_names()))
"
# simulate runs at most an hour per call; each round registers a fresh fleet.
while true; do
    python manage.py simulate --base-url "$base" --issue-token --agents "${DEMO_AGENTS:-6}" \
        --rate "${DEMO_JOB_RATE:-0.5}" --duration 3600
    sleep 1
done
