"""Wait until an HTTP URL answers 2xx/3xx and, optionally, a Redis server answers PING.

Used by the demo so the simulator starts after the web server and the broker are up.
Exits 1 after --timeout seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request

import redis

POLL_SECONDS = 0.5


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 400)
    except (urllib.error.URLError, OSError):
        return False


def redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if http_ok(args.url) and (args.redis is None or redis_ok(args.redis)):
            return 0
        time.sleep(POLL_SECONDS)
    print(f"demo_wait: {args.url} or {args.redis} not answering after {args.timeout}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
