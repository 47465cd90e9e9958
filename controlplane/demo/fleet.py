"""`simulate --heartbeats-only`: a large fleet that only heartbeats, from one asyncio process.

Threads per agent (the full simulator's design) stop at a few hundred agents; a fleet of
10,000 needs one event loop. Each agent heartbeats every interval (the first one at a
random point of the first interval, so the fleet is spread evenly) over a shared pool of
keep-alive HTTP/1.1 connections, and the largest gap between two of its successful
heartbeats is recorded. The agents are created directly in the database (bulk, with real
hashed keys) rather than registered one request each: registration is not what this mode
measures. The verdict: no agent of the fleet marked offline, and no gap longer than the
stale timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controlplane.agents.models import Agent, AgentHealth
from controlplane.common.secrets import issue_secret

HEARTBEAT_PATH = "/api/v1/agents/heartbeat"
FLEET_NAME_PREFIX = "sim-fleet-"
CONNECT_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass
class FleetResult:
    agents: int
    heartbeats: int = 0
    failures: int = 0
    max_gap_seconds: float = 0.0
    late_agents: int = 0  # agents with a gap over the stale timeout
    offline_agents: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def fleet_create(agents: int) -> tuple[list[int], list[str]]:
    """`agents` fresh platform agents (a previous fleet's are deleted); their ids and keys."""
    Agent.objects.filter(name__startswith=FLEET_NAME_PREFIX).delete()
    secrets = [issue_secret("cpa") for _ in range(agents)]
    rows = Agent.objects.bulk_create(
        [
            Agent(
                name=f"{FLEET_NAME_PREFIX}{i}",
                is_platform_agent=True,
                api_key_hash=secret.hash,
                api_key_prefix=secret.prefix,
            )
            for i, secret in enumerate(secrets)
        ],
        batch_size=2000,
    )
    return [row.pk for row in rows], [secret.raw for secret in secrets]


class _Pool:
    """Keep-alive connections to one server, each used by one request at a time."""

    def __init__(self, base_url: str, size: int) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(None)  # opened on first use

    async def post(self, key: str, deadline: float) -> int | None:
        """The answer's status (0 when the request failed), or None if the run ended while
        this request waited for a free connection (not sent, not counted)."""
        stream = await self.idle.get()
        if time.monotonic() >= deadline:
            self.idle.put_nowait(stream)
            return None
        try:
            if stream is None:
                stream = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_SECONDS
                )
            reader, writer = stream
            writer.write(
                f"POST {HEARTBEAT_PATH} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {key}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT_SECONDS)
            if b"connection: close" in head.lower():
                writer.close()
                stream = None
            return int(head.split(b" ", 2)[1])
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if stream is not None:
                stream[1].close()
            stream = None
            return 0
        finally:
            self.idle.put_nowait(stream)


async def _agent_loop(
    pool: _Pool, key: str, interval: float, deadline: float, rng: random.Random, result: FleetResult,
    stale_timeout: float,
) -> None:  # fmt: skip
    # Like an agent: the next heartbeat `interval` after the previous answer, the first one
    # at a random point of the first interval.
    started = time.monotonic()
    last_ok = started
    max_gap = 0.0
    next_at = started + rng.uniform(0, interval)
    while next_at < deadline:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        sent = time.monotonic()
        status = await pool.post(key, deadline)
        if status is None:
            break
        done = time.monotonic()
        result.latencies_ms.append((done - sent) * 1000)
        next_at = done + interval
        if status == 200:
            result.heartbeats += 1
            if last_ok != started:  # the first beat's wait is the spreading, not a gap
                max_gap = max(max_gap, done - last_ok)
            last_ok = done
        else:
            result.failures += 1
    if last_ok != started:  # a fleet that stops answering is late at the end too
        max_gap = max(max_gap, min(deadline, time.monotonic()) - last_ok)
    result.max_gap_seconds = max(result.max_gap_seconds, max_gap)
    result.late_agents += max_gap > stale_timeout


async def _fleet(
    base_url: str, keys: list[str], interval: float, duration: float, connections: int, stale_timeout: float,
    seed: int | None,
) -> FleetResult:  # fmt: skip
    pool = _Pool(base_url, connections)
    result = FleetResult(agents=len(keys))
    rng = random.Random(seed)
    deadline = time.monotonic() + duration
    await asyncio.gather(
        *(
            _agent_loop(pool, key, interval, deadline, random.Random(rng.random()), result, stale_timeout)
            for key in keys
        )
    )
    while not pool.idle.empty():
        stream = pool.idle.get_nowait()
        if stream is not None:
            stream[1].close()
    return result


def fleet_run(
    base_url: str,
    *,
    agents: int,
    interval: float,
    duration: float,
    connections: int,
    stale_timeout: float,
    seed: int | None,
) -> FleetResult:
    """Create the fleet, heartbeat it for `duration` seconds, then read who went offline."""
    ids, keys = fleet_create(agents)
    result = asyncio.run(_fleet(base_url, keys, interval, duration, connections, stale_timeout, seed))
    result.offline_agents = Agent.objects.filter(pk__in=ids, health=AgentHealth.OFFLINE).count()
    return result
