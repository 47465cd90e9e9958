"""Brute-force limits: the admin lockout (django-axes) and the agent API throttles (Django cache in Redis)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any
from unittest import mock

import pytest
import redis
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client

from controlplane.agents.services import agent_create
from controlplane.api import throttle
from controlplane.common.client import client_address

REGISTER = "/api/v1/agents/register"
LOGIN = "/admin/login/?next=/admin/"
BAD_BODY = {"bootstrap_token": "cpb_wrong", "name": "guess", "capabilities": []}


@pytest.fixture
def limits(settings: Any) -> Any:
    settings.API_REGISTER_BURST = 5
    settings.API_REGISTER_WINDOW_SECONDS = 600
    settings.API_UNAUTHORIZED_BURST = 1000  # a wrong token is a 401 too: out of the way here
    settings.API_UNAUTHORIZED_WINDOW_SECONDS = 600
    return settings


def fresh_address() -> str:
    """A client address no earlier test (or run) has counted: counters live in Redis."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def register(client: Client, address: str, **headers: str) -> Any:
    return client.post(REGISTER, BAD_BODY, content_type="application/json", REMOTE_ADDR=address, **headers)


def login(client: Client, address: str, password: str) -> Any:
    return client.post(LOGIN, {"username": "ops", "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_admin_lockout_refuses_the_right_password_after_the_limit(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 5
    User.objects.create_superuser("ops", "ops@example.com", "the-right-pw-1")
    client = Client()
    address = fresh_address()
    statuses = [login(client, address, "wrong").status_code for _ in range(5)]
    assert statuses == [200] * 4 + [429]  # the form again, then the 5th failure locks out
    response = login(client, address, "the-right-pw-1")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another address is not locked out for this username (lockout is username + address).
    other = Client()
    assert login(other, fresh_address(), "the-right-pw-1").status_code == 302
    # axes_reset (documented in the README) lifts it.
    call_command("axes_reset", verbosity=0)
    assert login(client, address, "the-right-pw-1").status_code == 302


@pytest.mark.django_db
def test_register_answers_429_with_retry_after_after_the_burst(limits: Any) -> None:
    client = Client()
    address = fresh_address()
    statuses = [register(client, address).status_code for _ in range(5)]
    assert statuses == [401] * 5
    refused = register(client, address)
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_requests"
    assert 1 <= int(refused["Retry-After"]) <= 600
    assert register(Client(), fresh_address()).status_code == 401  # another address: its own count


@pytest.mark.django_db
def test_rotating_x_forwarded_for_does_not_reset_the_counter(limits: Any) -> None:
    client = Client()
    address = fresh_address()
    # No trusted proxy: the header is ignored entirely.
    statuses = [register(client, address, HTTP_X_FORWARDED_FOR=fresh_address()).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # One trusted proxy: only the address it appended counts, whatever the client put before it.
    limits.TRUSTED_PROXY_COUNT = 1
    proxy, real = fresh_address(), fresh_address()
    statuses = [
        register(client, proxy, HTTP_X_FORWARDED_FOR=f"{fresh_address()}, {real}").status_code
        for _ in range(6)
    ]
    assert statuses == [401] * 5 + [429]


def test_client_address_follows_the_trusted_proxy_count(settings: Any) -> None:
    request = mock.Mock(
        META={"REMOTE_ADDR": "10.0.0.9", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 1.2.3.4, 10.0.0.5"}
    )
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_address(request) == "10.0.0.9"
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_address(request) == "10.0.0.5"
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_address(request) == "1.2.3.4"
    settings.TRUSTED_PROXY_COUNT = 5  # fewer hops than proxies: only REMOTE_ADDR is trustworthy
    assert client_address(request) == "10.0.0.9"


@pytest.mark.django_db
def test_repeated_401s_lock_the_address_out_of_the_api(limits: Any) -> None:
    limits.API_UNAUTHORIZED_BURST = 3
    client = Client()
    address = fresh_address()
    bad = {"HTTP_AUTHORIZATION": "Bearer cpk_guess", "REMOTE_ADDR": address}
    statuses = [client.post("/api/v1/agents/heartbeat", **bad).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    refused = client.post("/api/v1/jobs/claim", **bad)
    assert refused.status_code == 429
    assert "Retry-After" in refused


REFRESH_SECONDS = 0.3


@pytest.fixture
def quick_refresh(limits: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Copies of the blocked set that go stale after REFRESH_SECONDS, so a test can wait that out."""
    monkeypatch.setattr(throttle, "BLOCKED_REFRESH_SECONDS", REFRESH_SECONDS)
    return limits


@pytest.mark.django_db
def test_an_address_another_process_blocked_is_refused_here_within_the_refresh_period(
    quick_refresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_refresh.API_UNAUTHORIZED_BURST = 3
    client = Client()
    address = fresh_address()
    bad = {"HTTP_AUTHORIZATION": "Bearer cpk_guess", "REMOTE_ADDR": address}
    assert client.post("/api/v1/agents/heartbeat", **bad).status_code == 401  # this process's copy is read
    # Another worker counts the address's next 401s, up to the burst.
    with monkeypatch.context() as other_worker:
        other_worker.setattr(throttle, "_blocked", throttle._BlockedCopy())
        throttle.throttle_fail(throttle.unauthorized_limit(), address)
        throttle.throttle_fail(throttle.unauthorized_limit(), address)
    # This process may still hold its copy from before: at most one more 401 here, which is
    # counted, finds the count at the burst and refuses the next request at once.
    statuses = [client.post("/api/v1/agents/heartbeat", **bad).status_code for _ in range(2)]
    assert statuses in ([401, 429], [429, 429]), statuses


@pytest.mark.django_db
def test_a_refused_address_is_seen_by_a_process_that_only_reads_after_the_refresh_period(
    quick_refresh: Any,
) -> None:
    quick_refresh.API_UNAUTHORIZED_BURST = 2
    address = fresh_address()
    reader = throttle._BlockedCopy()
    limit = throttle.unauthorized_limit()
    assert address not in reader.addresses(limit, time.time())
    for _ in range(2):
        throttle.throttle_fail(limit, address)  # another process's copy (the module's)
    assert address not in reader.addresses(limit, time.time())  # stale, within the period
    time.sleep(REFRESH_SECONDS + 0.05)
    assert address in reader.addresses(limit, time.time())


@pytest.mark.django_db
def test_agent_requests_read_the_blocked_addresses_once_a_second_not_once_a_request(
    limits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = agent_create(name="steady", tenant=None, actor="user:test")
    monkeypatch.setattr(throttle, "_blocked", throttle._BlockedCopy())
    reads = {"smembers": 0, "get": 0}
    smembers, get = redis.Redis.smembers, cache.get

    def counting_smembers(self: Any, *args: Any) -> Any:
        reads["smembers"] += 1
        return smembers(self, *args)

    def counting_get(*args: Any, **kwargs: Any) -> Any:
        reads["get"] += 1
        return get(*args, **kwargs)

    monkeypatch.setattr(redis.Redis, "smembers", counting_smembers)
    monkeypatch.setattr(cache, "get", counting_get)
    client = Client()
    started = time.monotonic()
    statuses = [
        client.post(
            "/api/v1/agents/heartbeat", HTTP_AUTHORIZATION=f"Bearer {created.api_key}", REMOTE_ADDR="10.9.9.9"
        ).status_code
        for _ in range(20)
    ]
    elapsed = time.monotonic() - started
    assert statuses == [200] * 20
    assert reads["get"] == 0
    assert 1 <= reads["smembers"] <= 1 + int(elapsed / throttle.BLOCKED_REFRESH_SECONDS)


@pytest.mark.django_db
def test_a_redis_outage_costs_one_blocked_set_read_a_second(
    limits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"smembers": 0}

    def down(self: Any, *args: Any) -> Any:
        calls["smembers"] += 1
        raise redis.ConnectionError("injected: redis unreachable")

    monkeypatch.setattr(throttle, "_blocked", throttle._BlockedCopy())
    monkeypatch.setattr(redis.Redis, "smembers", down)
    address = fresh_address()
    for _ in range(10):
        assert throttle.throttle_refused(throttle.unauthorized_limit(), address) is None  # fails open
    assert calls["smembers"] == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_let_at_most_the_burst_through(limits: Any) -> None:
    address = fresh_address()
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = register(Client(), address).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(401) == 5  # INCR is atomic: exactly the burst
    assert statuses.count(429) == 15


@pytest.mark.django_db
def test_cache_errors_fail_open(limits: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("injected: redis unreachable")

    monkeypatch.setattr(cache, "incr", down)
    monkeypatch.setattr(cache, "get", down)
    address = fresh_address()
    assert [register(Client(), address).status_code for _ in range(8)] == [401] * 8
    assert throttle.throttle_hit(throttle.register_limit(), address) is None
