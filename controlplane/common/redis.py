"""The one place Redis clients are built: locks, readiness checks and the Django cache.

One setting set (design.md §10.2) describes the Redis: `REDIS_URL` is a `redis://`,
`rediss://` or `unix://` URL, or kombu's Sentinel form `sentinel://h1:26379;sentinel://h2:26379`
(password and database number of the first address apply to the master), with
`REDIS_SENTINEL_MASTER` naming the master, `REDIS_SENTINEL_PASSWORD` the sentinels' own
password, `REDIS_SENTINEL_TLS` for TLS to sentinels and master, and `REDIS_TLS_CA_FILE` the
CA that signs the servers' certificates. redis-py's `from_url` has no Sentinel scheme, so
the Sentinel form is parsed here into `Sentinel(...).master_for(...)`; the broker gets the
same addresses through kombu's own Sentinel transport (`broker_transport_options`).

Settings call the pure functions here (`redis_url_problem`, `broker_transport_options`,
`broker_use_ssl`) to refuse a bad value at start-up; clients are built at call time from
`django.conf.settings`, so tests can point them elsewhere.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

# Short timeouts: a Redis outage must turn into a fast `lock_unavailable` skip or a
# "redis: down" readiness entry, never a worker hung on a socket.
REDIS_SOCKET_TIMEOUT_SECONDS = 2.0
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0
HEALTH_CHECK_INTERVAL_SECONDS = 30  # PING an idle pooled connection before reusing it
DEFAULT_SENTINEL_PORT = 26379  # kombu's default as well
SENTINEL_SCHEME = "sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class SentinelUrl:
    """kombu's `sentinel://[user:password@]host:port[/db];sentinel://host:port...`, parsed."""

    addresses: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def sentinel_url_parse(url: str) -> SentinelUrl:
    """Parse the Sentinel form; ValueError says which address is wrong and why.

    As with kombu, the user, password and database number come from the first address
    (they are the master's); every address must be `sentinel://host[:port]`.
    """
    parts = url.split(";")
    addresses: list[tuple[str, int]] = []
    for number, raw in enumerate(parts, start=1):
        part = raw.strip()
        if not part:
            raise ValueError(f"address {number} is empty (a stray ';'?)")
        split = urlsplit(part)
        if split.scheme.lower() != SENTINEL_SCHEME:
            raise ValueError(f"address {number} ({part!r}) is not sentinel://host:port")
        if split.query or split.fragment:
            raise ValueError(f"address {number} ({part!r}) has a query or fragment; use the settings instead")
        try:
            port = split.port
        except ValueError as exc:
            raise ValueError(f"address {number} ({part!r}) has a bad port: {exc}") from exc
        if not split.hostname:
            raise ValueError(f"address {number} ({part!r}) has no host")
        if port == 0:
            raise ValueError(f"address {number} ({part!r}) has port 0")
        addresses.append((split.hostname, port or DEFAULT_SENTINEL_PORT))
    first = urlsplit(parts[0].strip())
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database number {path!r} of address 1 is not a number")
    return SentinelUrl(
        addresses=tuple(addresses),
        db=int(path) if path else 0,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a REDIS_URL value, or None when it is usable."""
    if is_sentinel_url(url):
        try:
            sentinel_url_parse(url)
        except ValueError as exc:
            return str(exc)
        return None
    scheme = urlsplit(url).scheme.lower()
    if scheme not in PLAIN_SCHEMES:
        return "expected redis://, rediss://, unix:// or sentinel://host:port[;sentinel://host:port...]"
    return None


def _tls_options(ca_file: str) -> dict[str, Any]:
    """Certificates are always verified; the CA file replaces the system store when set."""
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    return options


def sentinel_kwargs(
    *, password: str, tls: bool, ca_file: str, timeout_seconds: float = REDIS_SOCKET_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """How to talk to the sentinels themselves (redis-py and kombu take the same keys).

    No retries: a dead sentinel is skipped at once and the next one asked; redis-py's
    default of ten retries with back-off would stall every lookup for seconds.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "retry": Retry(NoBackoff(), 0),
    }
    if password:
        kwargs["password"] = password
    if tls:
        kwargs["ssl"] = True
        kwargs.update(_tls_options(ca_file))
    return kwargs


def broker_transport_options(
    broker_url: str,
    *,
    sentinel_master: str,
    sentinel_password: str,
    sentinel_tls: bool,
    tls_ca_file: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Celery's `broker_transport_options`: for a sentinel:// broker, kombu's `master_name`
    and `sentinel_kwargs` from the same settings as the locks; `overrides`
    (CELERY_BROKER_TRANSPORT_OPTIONS) win key by key."""
    options: dict[str, Any] = {}
    if is_sentinel_url(broker_url):
        if sentinel_master:
            options["master_name"] = sentinel_master
        options["sentinel_kwargs"] = sentinel_kwargs(
            password=sentinel_password, tls=sentinel_tls, ca_file=tls_ca_file
        )
    options.update(overrides)
    return options


def broker_use_ssl(broker_url: str, *, sentinel_tls: bool, tls_ca_file: str) -> dict[str, Any] | bool:
    """Celery's `broker_use_ssl` for a Redis broker over TLS: verified certificates.

    Without it kombu connects to a rediss:// broker with certificate checks off.
    `ssl_*` parameters in the broker URL's query still take precedence.
    """
    scheme = urlsplit(broker_url.split(";", 1)[0].strip()).scheme.lower()
    if scheme == "rediss" or (scheme == SENTINEL_SCHEME and sentinel_tls):
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if tls_ca_file:
            options["ssl_ca_certs"] = tls_ca_file
        return options
    return False


@dataclass(frozen=True)
class RedisConfig:
    """The setting set every client is built from (read from settings at call time)."""

    url: str
    sentinel_master: str = ""
    sentinel_password: str = ""
    sentinel_tls: bool = False
    tls_ca_file: str = ""

    @classmethod
    def from_settings(cls) -> RedisConfig:
        return cls(
            url=settings.REDIS_URL,
            sentinel_master=settings.REDIS_SENTINEL_MASTER,
            sentinel_password=settings.REDIS_SENTINEL_PASSWORD,
            sentinel_tls=settings.REDIS_SENTINEL_TLS,
            tls_ca_file=settings.REDIS_TLS_CA_FILE,
        )


@cache
def _client_for(config: RedisConfig, timeout_seconds: float) -> redis.Redis:
    common: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": min(timeout_seconds, REDIS_CONNECT_TIMEOUT_SECONDS),
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    if not is_sentinel_url(config.url):
        if urlsplit(config.url).scheme.lower() == "rediss":
            common.update(_tls_options(config.tls_ca_file))
        return redis.Redis.from_url(config.url, **common)
    if not config.sentinel_master:
        raise redis.ConnectionError("REDIS_URL is a sentinel:// address but REDIS_SENTINEL_MASTER is empty")
    parsed = sentinel_url_parse(config.url)
    master: dict[str, Any] = {**common, "db": parsed.db}
    if parsed.username:
        master["username"] = parsed.username
    if parsed.password:
        master["password"] = parsed.password
    if config.sentinel_tls:
        master["ssl"] = True
        master.update(_tls_options(config.tls_ca_file))
    sentinel = Sentinel(
        list(parsed.addresses),
        sentinel_kwargs=sentinel_kwargs(
            password=config.sentinel_password,
            tls=config.sentinel_tls,
            ca_file=config.tls_ca_file,
            timeout_seconds=timeout_seconds,
        ),
        **master,
    )
    # Each new connection asks the sentinels for the current master; a connection to a
    # master demoted by a failover fails with ConnectionError and is dropped from the pool.
    return sentinel.master_for(config.sentinel_master, redis_class=redis.Redis)


def redis_client(*, timeout_seconds: float = REDIS_SOCKET_TIMEOUT_SECONDS) -> redis.Redis:
    """A pooled client for the configured Redis (plain or Sentinel), never retrying:
    a failure surfaces as redis.ConnectionError or redis.TimeoutError within
    `timeout_seconds` per server asked, and the caller decides what it means."""
    return _client_for(RedisConfig.from_settings(), timeout_seconds)
