"""The one Redis client factory: plain, Sentinel and TLS, and the Django cache built on it.

The fast tests use the shared Redis (this run's database); the slow ones start their own
servers on private loopback ports: a Sentinel cluster (17120-17124), a TLS redis-server
(17130) and a TLS-only Sentinel pair (17131-17132).
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
import trustme
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from controlplane.common.cache import CACHE_TIMEOUT_SECONDS, RedisCache
from controlplane.common.redis import (
    broker_transport_options,
    broker_use_ssl,
    redis_client,
    redis_url_problem,
    sentinel_url_parse,
)
from reconcilers.runtime.lock import lock_acquire
from stress.procs import SentinelCluster

SENTINEL_PORTS = range(17120, 17125)
TLS_PORT = 17130
TLS_SENTINEL_PORTS = (17131, 17132)  # a TLS-only master and a TLS-only sentinel
SERVER_START_SECONDS = 10.0


# --- parsing and derivation (pure) -----------------------------------------------------------


def test_sentinel_url_in_kombus_form_parses_addresses_and_the_masters_credentials() -> None:
    parsed = sentinel_url_parse("sentinel://:s3cret@h1:26380/2;sentinel://h2;sentinel://10.0.0.3:26381")
    assert parsed.addresses == (("h1", 26380), ("h2", 26379), ("10.0.0.3", 26381))
    assert parsed.db == 2
    assert parsed.password == "s3cret"
    assert parsed.username is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://h1:26379;sentinel://h2:port", "address 2"),
        ("sentinel://h1:26379;;sentinel://h2:26379", "address 2 is empty"),
        ("sentinel://h1:26379;redis://h2:6379", "is not sentinel://"),
        ("sentinel://:26379", "has no host"),
        ("sentinel://h1:99999", "bad port"),
        ("sentinel://h1:26379/zero", "not a number"),
        ("sentinel://h1:26379?ssl=true", "query"),
        ("http://h1:6379", "expected redis://"),
    ],
)
def test_malformed_addresses_are_explained(url: str, message: str) -> None:
    problem = redis_url_problem(url)
    assert problem is not None
    assert message in problem


def test_plain_urls_are_accepted() -> None:
    for url in ("redis://h:6379/1", "rediss://:pw@h:6380/0", "unix:///run/redis.sock?db=2"):
        assert redis_url_problem(url) is None


def test_sentinel_broker_gets_master_name_and_sentinel_options_and_overrides_win() -> None:
    options = broker_transport_options(
        "sentinel://h1:26379;sentinel://h2:26379",
        sentinel_master="mymaster",
        sentinel_password="sentinel-pw",
        sentinel_tls=False,
        tls_ca_file="",
        overrides={"visibility_timeout": 7200, "master_name": "other"},
    )
    assert options["master_name"] == "other"
    assert options["visibility_timeout"] == 7200
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    assert options["sentinel_kwargs"]["socket_timeout"] == 2.0
    plain = broker_transport_options(
        "amqp://guest@h//",
        sentinel_master="",
        sentinel_password="",
        sentinel_tls=False,
        tls_ca_file="",
        overrides={},
    )
    assert plain == {}


def test_tls_brokers_verify_certificates() -> None:
    assert broker_use_ssl("redis://h:6379/0", sentinel_tls=False, tls_ca_file="") is False
    assert broker_use_ssl("amqp://h//", sentinel_tls=False, tls_ca_file="") is False
    assert broker_use_ssl("rediss://h:6380/0", sentinel_tls=False, tls_ca_file="/ca.pem") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/ca.pem",
    }
    assert broker_use_ssl("sentinel://h:26379", sentinel_tls=True, tls_ca_file="") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }


# --- the Django cache on the shared Redis ----------------------------------------------------


@pytest.fixture
def clean_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def test_cache_round_trip_lands_in_the_configured_redis(clean_cache: None, redis_client: redis.Redis) -> None:
    cache.set("greeting", {"hello": "world"}, timeout=30)
    assert cache.get("greeting") == {"hello": "world"}
    assert cache.add("attempts", 0, timeout=30)
    assert cache.incr("attempts") == 1
    assert cache.incr("attempts") == 2
    keys = {k.decode() for k in redis_client.scan_iter(match=f"{cache.key_prefix}:*")}
    assert keys == {cache.make_key("greeting"), cache.make_key("attempts")}
    assert 0 < redis_client.ttl(cache.make_key("attempts")) <= 30


def test_cache_clear_deletes_only_its_own_keys(
    clean_cache: None, redis_client: redis.Redis, settings: Any
) -> None:
    lock_key = f"{settings.RECONCILERS_LOCK_PREFIX}clear-test"
    redis_client.set(lock_key, "token", px=30_000)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.clear()
    assert cache.get("a") is None
    assert cache.get("b") is None
    assert redis_client.get(lock_key) == b"token"  # Django's own RedisCache would FLUSHDB it away


def test_cache_needs_a_key_prefix() -> None:
    with pytest.raises(ImproperlyConfigured, match="KEY_PREFIX"):
        RedisCache("", {})


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung Redis."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_cache_gives_up_fast_on_a_hung_redis(settings: Any, silent_server: int) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_server}/0"
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        cache.get("anything")
    elapsed = time.monotonic() - started
    assert CACHE_TIMEOUT_SECONDS <= elapsed < CACHE_TIMEOUT_SECONDS + 0.5


def test_cache_error_on_a_dead_redis_is_a_redis_error(settings: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    with pytest.raises(redis.ConnectionError):
        cache.incr("attempts")


# --- Sentinel (real servers) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(SENTINEL_PORTS, tmp_path_factory.mktemp("sentinel"), master_name="cptest")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def on_sentinel(settings: Any, sentinel_cluster: SentinelCluster) -> SentinelCluster:
    settings.REDIS_URL = sentinel_cluster.url(3)
    settings.REDIS_SENTINEL_MASTER = sentinel_cluster.master_name
    return sentinel_cluster


def _direct(port: int, db: int = 3) -> redis.Redis:
    return redis.Redis(port=port, db=db, socket_timeout=2)


def _master_port(cluster: SentinelCluster) -> int:
    address = cluster.master_addresses()[0]
    assert address is not None
    return address[1]


@pytest.mark.slow
def test_locks_go_to_the_master_the_sentinels_name(on_sentinel: SentinelCluster, settings: Any) -> None:
    held = lock_acquire("sentinel-lock", ttl_seconds=10)
    assert held is not None
    key = f"{settings.RECONCILERS_LOCK_PREFIX}sentinel-lock"
    master = _direct(_master_port(on_sentinel))
    assert master.get(key) == held.token.encode()
    assert lock_acquire("sentinel-lock", ttl_seconds=10) is None
    assert held.renew()
    assert held.release()
    assert master.get(key) is None


@pytest.mark.slow
def test_cache_goes_through_the_sentinels_too(on_sentinel: SentinelCluster, clean_cache: None) -> None:
    cache.set("through-sentinel", 42, timeout=30)
    assert cache.get("through-sentinel") == 42
    assert _direct(_master_port(on_sentinel)).exists(cache.make_key("through-sentinel"))
    cache.delete("through-sentinel")


@pytest.mark.slow
@pytest.mark.django_db
def test_readyz_pings_the_master_through_the_sentinels(
    on_sentinel: SentinelCluster, settings: Any, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/readyz").json()["redis"] == {"status": "ok"}
    settings.REDIS_SENTINEL_MASTER = "no-such-master"
    with caplog.at_level(logging.WARNING, logger="controlplane.health"):
        response = client.get("/readyz")
    assert response.status_code == 200  # Redis down never takes the API out of a load balancer
    assert response.json()["redis"] == {"status": "down"}  # why goes to the log only
    assert "MasterNotFoundError" in caplog.text


@pytest.mark.slow
def test_factory_client_follows_a_failover(on_sentinel: SentinelCluster) -> None:
    client = redis_client()
    client.set("before-failover", "1")
    old_port, new_port = on_sentinel.failover()
    # The sentinels demote the old master ~10 s later and close its clients; until then a
    # pooled connection may still write to it (design.md §10.2: the fence makes that safe).
    deadline = time.monotonic() + 40
    while on_sentinel.role(old_port) != "slave" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert on_sentinel.role(old_port) == "slave"
    errors = 0
    for _ in range(50):
        try:
            client.set("after-failover", "2")
            break
        except redis.ConnectionError:
            errors += 1
            time.sleep(0.1)
    assert _direct(new_port).get("after-failover") == b"2"
    assert _direct(new_port).get("before-failover") == b"1"  # replicated before the switch
    assert errors <= 1


# --- TLS (real servers, certificates from a throwaway CA) --------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    other = folder / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    paths["other_ca"] = other
    return paths


def _tls_args(files: dict[str, Path]) -> list[str]:
    return [
        "--tls-cert-file",
        str(files["cert"]),
        "--tls-key-file",
        str(files["key"]),
        "--tls-ca-cert-file",
        str(files["ca"]),
        "--tls-auth-clients",
        "no",
    ]


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_tls(port: int, ca: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=1)
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"TLS server on {port} did not start")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, Path]) -> Iterator[int]:
    log = tls_files["ca"].parent / "redis-tls.log"
    argv = ["redis-server", "--port", "0", "--tls-port", str(TLS_PORT), "--bind", "127.0.0.1"]
    proc = _spawn([*argv, "--save", "", "--appendonly", "no", *_tls_args(tls_files)], log)
    try:
        _wait_tls(TLS_PORT, tls_files["ca"])
        yield TLS_PORT
    finally:
        _stop([proc])


@pytest.mark.slow
def test_rediss_verifies_the_server_against_the_ca_file(
    settings: Any, tls_server: int, tls_files: dict[str, Path]
) -> None:
    settings.REDIS_URL = f"rediss://127.0.0.1:{tls_server}/0"
    settings.REDIS_TLS_CA_FILE = str(tls_files["ca"])
    assert redis_client().ping()
    settings.REDIS_TLS_CA_FILE = str(tls_files["other_ca"])  # a CA that did not sign it
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client().ping()


@pytest.mark.slow
def test_rediss_broker_publishes_and_consumes_with_verified_tls(
    tls_server: int, tls_files: dict[str, Path]
) -> None:
    url = f"rediss://127.0.0.1:{tls_server}/0"
    use_ssl = broker_use_ssl(url, sentinel_tls=False, tls_ca_file=str(tls_files["ca"]))
    with kombu.Connection(url, ssl=use_ssl, connect_timeout=5) as conn:
        queue = conn.SimpleQueue("cptest-tls")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    wrong = broker_use_ssl(url, sentinel_tls=False, tls_ca_file=str(tls_files["other_ca"]))
    with (
        kombu.Connection(url, ssl=wrong, connect_timeout=5) as conn,
        pytest.raises(Exception, match="certificate"),
    ):
        conn.ensure_connection(max_retries=1)


@pytest.fixture(scope="module")
def tls_sentinel(tls_files: dict[str, Path]) -> Iterator[tuple[int, int]]:
    """A TLS-only master and one TLS-only sentinel that reaches it over TLS."""
    master_port, sentinel_port = TLS_SENTINEL_PORTS
    folder = tls_files["ca"].parent
    tls = _tls_args(tls_files)
    config = folder / "sentinel-tls.conf"
    config.write_text(
        f"port 0\ntls-port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
        f"tls-cert-file {tls_files['cert']}\ntls-key-file {tls_files['key']}\n"
        f"tls-ca-cert-file {tls_files['ca']}\ntls-auth-clients no\ntls-replication yes\n"
        f"sentinel monitor cptls 127.0.0.1 {master_port} 1\n"
    )
    processes = [
        _spawn(
            [
                "redis-server",
                "--port",
                "0",
                "--tls-port",
                str(master_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *tls,
            ],
            folder / "master-tls.log",
        ),
        _spawn(["redis-server", str(config), "--sentinel"], folder / "sentinel-tls.log"),
    ]
    try:
        _wait_tls(master_port, tls_files["ca"])
        _wait_tls(sentinel_port, tls_files["ca"])
        yield master_port, sentinel_port
    finally:
        _stop(processes)


@pytest.mark.slow
def test_sentinel_over_tls(settings: Any, tls_sentinel: tuple[int, int], tls_files: dict[str, Path]) -> None:
    master_port, sentinel_port = tls_sentinel
    settings.REDIS_URL = f"sentinel://127.0.0.1:{sentinel_port}/0"
    settings.REDIS_SENTINEL_MASTER = "cptls"
    settings.REDIS_SENTINEL_TLS = True
    settings.REDIS_TLS_CA_FILE = str(tls_files["ca"])
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:  # the sentinel answers before it has checked its master once
        try:
            redis_client().set("over-tls", "yes")
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    direct = redis.Redis(port=master_port, ssl=True, ssl_ca_certs=str(tls_files["ca"]))
    assert direct.get("over-tls") == b"yes"
    settings.REDIS_SENTINEL_TLS = False  # plain text to a TLS-only sentinel fails, never falls back
    with pytest.raises(redis.ConnectionError):
        redis_client().ping()
