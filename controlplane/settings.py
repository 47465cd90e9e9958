"""Every setting of the project, read once from the environment.

A malformed variable stops start-up with ImproperlyConfigured naming the variable,
so a typo in a deployment never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from environs import Env, EnvError

from controlplane.common.logs import logging_config
from controlplane.common.redis import (
    broker_transport_options,
    broker_use_ssl,
    is_sentinel_url,
    redis_url_problem,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state of the embedded default (ignored by git)

env = Env()


def _read(name: str, parse: Any, *args: Any, validate: Any = None, **kwargs: Any) -> Any:
    """Parse one variable; any failure becomes an error that names the variable.

    `validate` returns False for a value out of range. It is applied here, not handed to
    environs: marshmallow 4 ignores a validator's return value, so a False never refused.
    """
    try:
        value = parse(name, *args, **kwargs)
    except (EnvError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name} is malformed: {exc}") from exc
    if validate is not None and not validate(value):
        raise ImproperlyConfigured(f"{name} is malformed: {value!r} is not an accepted value")
    return value


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


DEBUG: bool = _read("DEBUG", env.bool, False)

SECRET_KEY: str = _read("SECRET_KEY", env.str, "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off (set DEBUG=1 locally)")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on-0123456789abcdef"

ALLOWED_HOSTS: list[str] = _read(
    "ALLOWED_HOSTS", env.list, ["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS: list[str] = _read("CSRF_TRUSTED_ORIGINS", env.list, [])

# --- database -------------------------------------------------------------------------------
DEFAULT_SQLITE_PATH = VAR_DIR / "controlplane.sqlite3"
_database: dict[str, Any] = _read(
    "DATABASE_URL", env.dj_db_url, f"sqlite:///{DEFAULT_SQLITE_PATH}", conn_max_age=60
)
# --- PostgreSQL connection liveness (libpq options) ---------------------------------------
# A black-holed socket (a partition, a dead host) must error instead of hanging for the
# kernel's retransmission timeouts (many minutes): keepalives find a silent peer while a
# statement waits, tcp_user_timeout drops a connection whose sent data stays unacked.
# Defaults detect a dead peer in about 25 s, below the lock TTL's multiples (design.md §4.4).
# Read whatever the database, so a malformed value always stops start-up; applied to
# PostgreSQL only.
DATABASE_LIVENESS_OPTIONS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": _read(
        "DATABASE_KEEPALIVES_IDLE_SECONDS", env.int, 10, validate=lambda v: 1 <= v <= 3600
    ),
    "keepalives_interval": _read(
        "DATABASE_KEEPALIVES_INTERVAL_SECONDS", env.int, 5, validate=lambda v: 1 <= v <= 3600
    ),
    "keepalives_count": _read("DATABASE_KEEPALIVES_COUNT", env.int, 3, validate=lambda v: 1 <= v <= 100),
    # libpq takes milliseconds; 0 leaves the kernel's default (off)
    "tcp_user_timeout": 1000
    * _read("DATABASE_TCP_USER_TIMEOUT_SECONDS", env.int, 20, validate=lambda v: 0 <= v <= 3600),
}
# --- end of PostgreSQL connection liveness ------------------------------------------------
if not _database.get("ENGINE"):
    raise ImproperlyConfigured("DATABASE_URL is malformed: unknown database scheme")
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite with several processes: WAL so readers never block the writer, a busy
    # timeout instead of instant "database is locked", and BEGIN IMMEDIATE so a
    # transaction takes the write lock up front instead of failing on upgrade.
    _database["CONN_MAX_AGE"] = 0
    _database["OPTIONS"] = {
        "timeout": 20,  # seconds
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    if _database["NAME"] not in ("", ":memory:"):
        Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        # Tests get a file beside the configured one, so parallel runs never share a file.
        _database.setdefault("TEST", {})["NAME"] = (
            str(Path(_database["NAME"]).with_suffix("")) + "-test.sqlite3"
        )
elif _database["ENGINE"] in (
    "django.db.backends.postgresql",
    "django_prometheus.db.backends.postgresql",
):
    _database.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # PostgreSQL connection liveness: the options read above (a value in DATABASE_URL's
    # query string wins over them)
    for _option, _value in DATABASE_LIVENESS_OPTIONS.items():
        _database["OPTIONS"].setdefault(_option, _value)

# --- database connections and pooling (design.md §10.2) -------------------------------------
# CONN_MAX_AGE: seconds a process keeps its connection between requests and tasks (0: a new
# one each time). CONN_HEALTH_CHECKS: ping a kept connection before its first use in a request,
# so a server restart costs no failed request. DATABASE_POOL=pgbouncer declares PgBouncer in
# transaction pooling in front of PostgreSQL: each transaction may run on another server
# connection, so no session state may outlive a transaction. Server-side cursors are then off
# (DISABLE_SERVER_SIDE_CURSORS, which cannot be turned back on), and Django keeps psycopg's
# prepare_threshold at None (no prepared statements: PgBouncer 1.18 has none in that mode).
# The batch walks never need either (reconcilers/queries/batches.py). SQLite keeps no
# connection (CONN_MAX_AGE 0) and cannot be pooled.
DATABASE_POOL: str = _read("DATABASE_POOL", env.str, "none", validate=lambda v: v in ("none", "pgbouncer"))
_conn_max_age: int = _read("CONN_MAX_AGE", env.int, 60, validate=lambda v: 0 <= v <= 86400)
_conn_health_checks: bool = _read("CONN_HEALTH_CHECKS", env.bool, True)
_pooled = DATABASE_POOL == "pgbouncer"
_disable_cursors: bool = _read("DISABLE_SERVER_SIDE_CURSORS", env.bool, _pooled)
if _database["ENGINE"] == "django.db.backends.sqlite3":
    if _pooled:
        raise ImproperlyConfigured("DATABASE_POOL=pgbouncer needs a PostgreSQL DATABASE_URL")
else:
    if _pooled and not _disable_cursors:
        raise ImproperlyConfigured(
            "DISABLE_SERVER_SIDE_CURSORS=0 is refused with DATABASE_POOL=pgbouncer: a server-side "
            "cursor does not survive its transaction in transaction pooling"
        )
    if _pooled and "prepare_threshold" in _database.get("OPTIONS", {}):
        raise ImproperlyConfigured("DATABASE_POOL=pgbouncer: prepared statements must stay off")
    _database["CONN_MAX_AGE"] = _conn_max_age
    _database["CONN_HEALTH_CHECKS"] = _conn_health_checks
    _database["DISABLE_SERVER_SIDE_CURSORS"] = _disable_cursors
# --- end of database connections and pooling ------------------------------------------------
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis and celery ---------------------------------------------------------------------
# One setting set for every Redis client (locks, /readyz, the Django cache) and the broker
# (design.md §10.2). REDIS_URL unset means "no Redis configured": the demo starts an
# embedded one and sets it.
REDIS_URL: str = _read("REDIS_URL", env.str, "redis://127.0.0.1:6379/0")
_problem = redis_url_problem(REDIS_URL)
if _problem:
    raise ImproperlyConfigured(f"REDIS_URL is malformed: {_problem}")
REDIS_SENTINEL_MASTER: str = _read("REDIS_SENTINEL_MASTER", env.str, "")
if not REDIS_SENTINEL_MASTER.isprintable() or any(c.isspace() for c in REDIS_SENTINEL_MASTER):
    raise ImproperlyConfigured("REDIS_SENTINEL_MASTER is malformed: a master name has no spaces")
REDIS_SENTINEL_PASSWORD: str = _read("REDIS_SENTINEL_PASSWORD", env.str, "")
REDIS_SENTINEL_TLS: bool = _read("REDIS_SENTINEL_TLS", env.bool, False)
REDIS_TLS_CA_FILE: str = _read("REDIS_TLS_CA_FILE", env.str, "")
if REDIS_TLS_CA_FILE and not Path(REDIS_TLS_CA_FILE).is_file():
    raise ImproperlyConfigured(f"REDIS_TLS_CA_FILE is malformed: no such file {REDIS_TLS_CA_FILE!r}")

CELERY_BROKER_URL: str = _read("CELERY_BROKER_URL", env.str, REDIS_URL)
if is_sentinel_url(CELERY_BROKER_URL):
    _problem = redis_url_problem(CELERY_BROKER_URL)
    if _problem:
        raise ImproperlyConfigured(f"CELERY_BROKER_URL is malformed: {_problem}")
# kombu's transport options as a JSON object, applied over the ones derived above
# (e.g. {"visibility_timeout": 3600} for Redis, {"confirm_publish": true} for RabbitMQ).
_broker_overrides: Any = _read("CELERY_BROKER_TRANSPORT_OPTIONS", env.json, {})
if not isinstance(_broker_overrides, dict):
    raise ImproperlyConfigured("CELERY_BROKER_TRANSPORT_OPTIONS is malformed: expected a JSON object")
_sentinel_urls = [
    n
    for n, url in (("REDIS_URL", REDIS_URL), ("CELERY_BROKER_URL", CELERY_BROKER_URL))
    if is_sentinel_url(url)
]
if not REDIS_SENTINEL_MASTER:
    if "REDIS_URL" in _sentinel_urls or (
        "CELERY_BROKER_URL" in _sentinel_urls and "master_name" not in _broker_overrides
    ):
        raise ImproperlyConfigured(
            f"REDIS_SENTINEL_MASTER is required when {_sentinel_urls[0]} is a sentinel:// address "
            "(the name in the sentinels' `sentinel monitor <name> ...`)"
        )
elif not _sentinel_urls:
    raise ImproperlyConfigured(
        "REDIS_SENTINEL_MASTER is set but neither REDIS_URL nor CELERY_BROKER_URL is a sentinel:// address"
    )
if REDIS_SENTINEL_TLS and not _sentinel_urls:
    raise ImproperlyConfigured(
        "REDIS_SENTINEL_TLS is set but neither REDIS_URL nor CELERY_BROKER_URL is a sentinel:// address"
    )
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = broker_transport_options(
    CELERY_BROKER_URL,
    sentinel_master=REDIS_SENTINEL_MASTER,
    sentinel_password=REDIS_SENTINEL_PASSWORD,
    sentinel_tls=REDIS_SENTINEL_TLS,
    tls_ca_file=REDIS_TLS_CA_FILE,
    overrides=_broker_overrides,
)
CELERY_BROKER_USE_SSL: dict[str, Any] | bool = broker_use_ssl(
    CELERY_BROKER_URL, sentinel_tls=REDIS_SENTINEL_TLS, tls_ca_file=REDIS_TLS_CA_FILE
)
CELERY_RESULT_BACKEND: str | None = None
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery 6's default, set now: it only cancels acks_late tasks when the broker connection is
# lost (none here), and silences the warning every broker failover would otherwise log.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True

# The Django cache `default` is this Redis, through the same client factory (so Sentinel and
# TLS apply), with short timeouts. Request throttles keep their counters here and must fail
# open on a cache error (design.md §10.2). `clear()` deletes only keys under KEY_PREFIX.
CACHES: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "controlplane.common.cache.RedisCache",
        "KEY_PREFIX": "controlplane:cache",
        "TIMEOUT": 300,  # seconds, when a caller gives none
    }
}

# --- reconcilers ----------------------------------------------------------------------------
RECONCILERS_PAUSED: bool = _read("RECONCILERS_PAUSED", env.bool, False)
RECONCILERS_RUN_HISTORY_DAYS: int = _read("RECONCILERS_RUN_HISTORY_DAYS", env.int, 7)
RECONCILERS_MIN_GAP_FRACTION: float = _read("RECONCILERS_MIN_GAP_FRACTION", env.float, 0.75)
if not 0.5 < RECONCILERS_MIN_GAP_FRACTION < 1:
    raise ImproperlyConfigured("RECONCILERS_MIN_GAP_FRACTION must be > 0.5 and < 1")
RECONCILERS_LOCK_BACKEND: str = _read(
    "RECONCILERS_LOCK_BACKEND", env.str, "redis", validate=lambda v: v in ("redis", "database")
)
RECONCILERS_LOCK_PREFIX: str = _read("RECONCILERS_LOCK_PREFIX", env.str, "controlplane:lock:")
RECONCILERS_QUEUE: str = _read("RECONCILERS_QUEUE", env.str, "reconcilers")
# Where the admin's Run now / Dry-run now run: `celery` sends the controller's task to a
# worker (the web request never runs a reconcile); `inprocess` runs it in the web process,
# for installs that run `manage.py runcontrollers` and have no broker.
RECONCILERS_ADMIN_RUNS: str = _read(
    "RECONCILERS_ADMIN_RUNS", env.str, "celery", validate=lambda v: v in ("celery", "inprocess")
)
# Lock TTL (seconds): renewed every TTL/3 while a run lasts; PostgreSQL statement and
# lock-wait timeouts of a run sit just below it so a paused holder cannot block a new one.
RECONCILERS_LOCK_TTL_SECONDS: float = _read(
    "RECONCILERS_LOCK_TTL_SECONDS", env.float, 30.0, validate=lambda v: 3 <= v <= 3600
)
# The Celery worker's main process serves the controller metrics of all its children here
# (prometheus_client multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set); 0 disables it.
WORKER_METRICS_PORT: int = _read("WORKER_METRICS_PORT", env.int, 9808, validate=lambda v: 0 <= v <= 65535)
# Loopback by default: the metrics carry no secret but tell anyone who can reach the port how
# the fleet is doing. Containers set 0.0.0.0 so Prometheus can scrape them (docker-compose.yml).
WORKER_METRICS_HOST: str = _read(
    "WORKER_METRICS_HOST", env.str, "127.0.0.1", validate=lambda v: _is_ip_address(v)
)
METRICS_NAMESPACE: str = _read("METRICS_NAMESPACE", env.str, "controlplane")
AGENT_HEARTBEAT_INTERVAL_SECONDS: int = _read(
    "AGENT_HEARTBEAT_INTERVAL_SECONDS", env.int, 30, validate=lambda v: 1 <= v <= 3600
)

# audit-retention's archive_dir is a folder under this root (design.md §5.5); empty means no
# local archive is configured, and a config that names an archive_dir is then invalid.
AUDIT_ARCHIVE_ROOT: str = _read("AUDIT_ARCHIVE_ROOT", env.str, "")
if AUDIT_ARCHIVE_ROOT and (not Path(AUDIT_ARCHIVE_ROOT).is_absolute() or "\x00" in AUDIT_ARCHIVE_ROOT):
    raise ImproperlyConfigured("AUDIT_ARCHIVE_ROOT is malformed: must be an absolute path")

# --- audit archives on object storage (design.md §5.5) -------------------------------------
# audit-retention's `archive_dir` may be s3://bucket/prefix: these say how to reach the bucket
# (credentials come from boto3's own chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile
# or a role). Timeouts and retries bound how long a batch waits on the storage before it is
# refused with nothing deleted.
AUDIT_ARCHIVE_S3_ENDPOINT_URL: str = _read(
    "AUDIT_ARCHIVE_S3_ENDPOINT_URL",
    env.str,
    "",
    validate=lambda v: v == "" or v.startswith(("http://", "https://")),
)
AUDIT_ARCHIVE_S3_REGION: str = _read("AUDIT_ARCHIVE_S3_REGION", env.str, "")
AUDIT_ARCHIVE_S3_ADDRESSING_STYLE: str = _read(
    "AUDIT_ARCHIVE_S3_ADDRESSING_STYLE", env.str, "auto", validate=lambda v: v in ("auto", "path", "virtual")
)
AUDIT_ARCHIVE_S3_CONNECT_TIMEOUT_SECONDS: float = _read(
    "AUDIT_ARCHIVE_S3_CONNECT_TIMEOUT_SECONDS", env.float, 5.0, validate=lambda v: 0 < v <= 60
)
AUDIT_ARCHIVE_S3_READ_TIMEOUT_SECONDS: float = _read(
    "AUDIT_ARCHIVE_S3_READ_TIMEOUT_SECONDS", env.float, 30.0, validate=lambda v: 0 < v <= 300
)
AUDIT_ARCHIVE_S3_MAX_ATTEMPTS: int = _read(
    "AUDIT_ARCHIVE_S3_MAX_ATTEMPTS", env.int, 3, validate=lambda v: 1 <= v <= 10
)

# --- django ------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_prometheus",
    "ninja",  # the API docs page renders django-ninja's templates with its shipped static files (no CDN)
    "controlplane.tenants",
    "controlplane.agents",
    "controlplane.commands",
    "controlplane.tokens",
    "controlplane.audit",
    "controlplane.api",
    "reconcilers",
    "controlplane.demo",  # after the apps whose admin it extends
    "axes",  # admin login lockout; last, as its docs ask
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username + address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# The agent API's lighter path (controlplane/api/middleware.py): session, authentication and
# messages are Django's, wrapped to step aside for /api/v1/ (bearer keys, no cookies), and the
# API skips the per-request connection health check.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # First after the timer: every line logged while a request runs carries its id.
    "controlplane.common.logs.RequestIdMiddleware",
    "controlplane.api.middleware.AgentApiConnectionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.api.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "controlplane.api.middleware.AuthenticationMiddleware",
    "controlplane.api.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "controlplane.api.throttle.ApiThrottleMiddleware",
    "controlplane.api.guard.ApiGuardMiddleware",
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "controlplane" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- security (production when DEBUG is off; `manage.py check --deploy` is clean) -----------
# How many reverse proxies sit in front of the web process (0: clients connect directly). The one
# setting behind every "who is the client" decision: X-Forwarded-Proto is trusted only with a
# proxy, and the client address of throttles and the admin lockout is the one the outermost
# trusted proxy saw (controlplane.common.client), so rotating X-Forwarded-For changes nothing.
TRUSTED_PROXY_COUNT: int = _read("TRUSTED_PROXY_COUNT", env.int, 0, validate=lambda v: 0 <= v <= 10)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXY_COUNT else None
NINJA_NUM_PROXIES = TRUSTED_PROXY_COUNT
SECURE_SSL_REDIRECT: bool = _read("SECURE_SSL_REDIRECT", env.bool, not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS: int = _read("SECURE_HSTS_SECONDS", env.int, 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- brute-force limits (design.md §10.3) -------------------------------------------------
# Admin login: django-axes, database handler, locks a username + address pair out after
# ADMIN_LOGIN_FAILURE_LIMIT failures for ADMIN_LOGIN_LOCKOUT_MINUTES (`manage.py axes_reset`
# lifts every lockout at once).
ADMIN_LOGIN_FAILURE_LIMIT: int = _read(
    "ADMIN_LOGIN_FAILURE_LIMIT", env.int, 5, validate=lambda v: 1 <= v <= 1000
)
ADMIN_LOGIN_LOCKOUT_MINUTES: int = _read(
    "ADMIN_LOGIN_LOCKOUT_MINUTES", env.int, 15, validate=lambda v: 1 <= v <= 10080
)
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = ADMIN_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=ADMIN_LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "controlplane.common.client.client_address_or_none"
AXES_IPWARE_PROXY_COUNT = TRUSTED_PROXY_COUNT or None  # unused with the callable; kept consistent
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False  # one warning per lockout from our own signal handler is enough
# Agent API: fixed-window counters per client address in the Django cache (Redis, shared by every
# worker and host). Registrations: at most API_REGISTER_BURST per API_REGISTER_WINDOW_SECONDS;
# 401 answers: after API_UNAUTHORIZED_BURST in API_UNAUTHORIZED_WINDOW_SECONDS, every request
# of that address gets 429 until the window ends. A cache error lets the request through.
API_REGISTER_BURST: int = _read("API_REGISTER_BURST", env.int, 10, validate=lambda v: 1 <= v <= 100000)
API_REGISTER_WINDOW_SECONDS: int = _read(
    "API_REGISTER_WINDOW_SECONDS", env.int, 60, validate=lambda v: 1 <= v <= 86400
)
API_UNAUTHORIZED_BURST: int = _read(
    "API_UNAUTHORIZED_BURST", env.int, 20, validate=lambda v: 1 <= v <= 100000
)
API_UNAUTHORIZED_WINDOW_SECONDS: int = _read(
    "API_UNAUTHORIZED_WINDOW_SECONDS", env.int, 60, validate=lambda v: 1 <= v <= 86400
)

# JSON bodies of the agent API nested deeper than this are refused with a 400 (controlplane.api.guard).
API_JSON_MAX_DEPTH: int = _read("API_JSON_MAX_DEPTH", env.int, 64, validate=lambda v: 2 <= v <= 500)

# --- logging: stderr, one line per event, JSON one setting away -------------------------
LOG_LEVEL: str = _read(
    "LOG_LEVEL", env.str, "INFO", validate=lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")
).upper()
LOG_JSON: bool = _read("LOG_JSON", env.bool, False)
LOGGING = logging_config(level=LOG_LEVEL, json=LOG_JSON)
