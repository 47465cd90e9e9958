"""Every setting of the project, read once from the environment.

A malformed variable stops start-up with ImproperlyConfigured naming the variable,
so a typo in a deployment never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from environs import Env, EnvError

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
# REDIS_URL unset means "no Redis configured": the demo starts an embedded one and sets it.
REDIS_URL: str = _read("REDIS_URL", env.str, "redis://127.0.0.1:6379/0")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured("REDIS_URL is malformed: expected redis://, rediss:// or unix://")
CELERY_BROKER_URL: str = _read("CELERY_BROKER_URL", env.str, REDIS_URL)
CELERY_RESULT_BACKEND: str | None = None
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

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

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
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
