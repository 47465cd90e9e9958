"""Every setting of the project, read once from the environment.

A malformed variable stops start-up with ImproperlyConfigured naming the variable,
so a typo in a deployment never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from environs import Env, EnvError

from controlplane.common.redis import (
    broker_transport_options,
    broker_use_ssl,
    is_sentinel_url,
    redis_url_problem,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state of the embedded default (ignored by git)

env = Env()


def _read(name: str, parse: Any, *args: Any, **kwargs: Any) -> Any:
    """Parse one variable; any failure becomes an error that names the variable."""
    try:
        return parse(name, *args, **kwargs)
    except (EnvError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name} is malformed: {exc}") from exc


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
    _database["CONN_HEALTH_CHECKS"] = True
    _database.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
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
# Lock TTL (seconds): renewed every TTL/3 while a run lasts; PostgreSQL statement and
# lock-wait timeouts of a run sit just below it so a paused holder cannot block a new one.
RECONCILERS_LOCK_TTL_SECONDS: float = _read(
    "RECONCILERS_LOCK_TTL_SECONDS", env.float, 30.0, validate=lambda v: 3 <= v <= 3600
)
# The Celery worker's main process serves the controller metrics of all its children here
# (prometheus_client multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set); 0 disables it.
WORKER_METRICS_PORT: int = _read("WORKER_METRICS_PORT", env.int, 9808, validate=lambda v: 0 <= v <= 65535)
METRICS_NAMESPACE: str = _read("METRICS_NAMESPACE", env.str, "controlplane")
AGENT_HEARTBEAT_INTERVAL_SECONDS: int = _read(
    "AGENT_HEARTBEAT_INTERVAL_SECONDS", env.int, 30, validate=lambda v: 1 <= v <= 3600
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
    "controlplane.tenants",
    "controlplane.agents",
    "controlplane.commands",
    "controlplane.tokens",
    "controlplane.audit",
    "controlplane.api",
    "reconcilers",
    "controlplane.demo",  # after the apps whose admin it extends
]

# The agent API's lighter path (controlplane/api/middleware.py): session, authentication and
# messages are Django's, wrapped to step aside for /api/v1/ (bearer keys, no cookies), and the
# API skips the per-request connection health check.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "controlplane.api.middleware.AgentApiConnectionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.api.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "controlplane.api.middleware.AuthenticationMiddleware",
    "controlplane.api.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT: bool = _read("SECURE_SSL_REDIRECT", env.bool, not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS: int = _read("SECURE_HSTS_SECONDS", env.int, 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- logging: stderr, one line per event, JSON one setting away -------------------------
LOG_LEVEL: str = _read(
    "LOG_LEVEL", env.str, "INFO", validate=lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")
).upper()
LOG_JSON: bool = _read("LOG_JSON", env.bool, False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "json" if LOG_JSON else "plain",
        }
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        "controlplane": {"level": LOG_LEVEL},
        "reconcilers": {"level": LOG_LEVEL},
    },
}
