"""The heartbeat floor: the least a web process can do for one heartbeat (bench only, never shipped).

A bare WSGI callable, served by the same gunicorn command line as the project, doing the
same work with raw psycopg and no framework: read the bearer key, find the active agent by
its prefix, compare the key's SHA-256 in constant time, then one statement that sets
last_seen_at (database clock), health and version on the agent row only if it is still
active and upserts a platform agent's lease, and answer the same JSON. One connection per
worker process, autocommit (the single statement is its own transaction), psycopg's
default server-side parameters (statements are prepared after a few runs).

    DATABASE_URL=postgres://... gunicorn bench.floor_app:application
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import psycopg

HEARTBEAT_PATH = "/api/v1/agents/heartbeat"
HEARTBEAT_INTERVAL_SECONDS = 30
LEASE_DURATION_DEFAULT_SECONDS = 60

_AUTH = "SELECT id, api_key_hash FROM agents_agent WHERE api_key_prefix = %s AND status = 'active'"
_BEAT = """
    WITH beat AS (
        UPDATE agents_agent
           SET last_seen_at = statement_timestamp(), health = 'online', version = version + 1,
               updated_at = statement_timestamp()
         WHERE id = %s AND status = 'active'
     RETURNING id, last_seen_at, is_platform_agent
    ), lease AS (
        INSERT INTO agents_agentlease (agent_id, holder_identity, renew_time, lease_duration_seconds, version)
        SELECT id, 'agent-' || id, last_seen_at, %s, 1 FROM beat WHERE is_platform_agent
            ON CONFLICT (agent_id) DO UPDATE
           SET renew_time = EXCLUDED.renew_time, holder_identity = EXCLUDED.holder_identity,
               version = agents_agentlease.version + 1
     RETURNING renew_time, lease_duration_seconds
    )
    SELECT lease.renew_time, lease.lease_duration_seconds FROM beat LEFT JOIN lease ON true
"""
_UNAUTHORIZED = json.dumps({"error": "unauthorized", "detail": "missing or invalid credentials"}).encode()

_connection: psycopg.Connection[Any] | None = None


def _db() -> psycopg.Connection[Any]:
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(_conninfo(), autocommit=True)
    return _connection


def _conninfo() -> str:
    url = os.environ["DATABASE_URL"]
    return url.replace("postgres://", "postgresql://", 1)


def _answer(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != HEARTBEAT_PATH or environ.get("REQUEST_METHOD") != "POST":
        return _answer(start_response, "404 Not Found", b'{"error": "not_found"}')
    header = environ.get("HTTP_AUTHORIZATION", "")
    key = header[7:] if header.startswith("Bearer ") else ""
    parts = key.split("_", 2)
    if len(key) > 200 or len(parts) != 3 or len(parts[1]) != 8:
        return _answer(start_response, "401 Unauthorized", _UNAUTHORIZED)
    digest = hashlib.sha256(key.encode()).hexdigest()
    db = _db()
    agent_id = None
    for candidate, stored in db.execute(_AUTH, (parts[1],)).fetchall():
        if hmac.compare_digest(digest, stored):
            agent_id = candidate
    if agent_id is None:
        return _answer(start_response, "401 Unauthorized", _UNAUTHORIZED)
    row = db.execute(_BEAT, (agent_id, LEASE_DURATION_DEFAULT_SECONDS)).fetchone()
    if row is None:
        return _answer(start_response, "401 Unauthorized", _UNAUTHORIZED)
    renewed_at, duration = row
    expires = None if renewed_at is None else (renewed_at + timedelta(seconds=duration)).isoformat()
    body = {"heartbeat_interval_seconds": HEARTBEAT_INTERVAL_SECONDS, "lease_expires_at": expires}
    return _answer(start_response, "200 OK", json.dumps(body).encode())
