"""Wait until an HTTP URL answers 2xx/3xx and, optionally, a Redis server answers PING.

Used by the demo so the simulator starts after the web server and the broker are up.
Exits 1 after --timeout seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

import django
import redis

POLL_SECONDS = 0.5


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 400)
    except (urllib.error.URLError, OSError):
        return False


def redis_ok() -> bool:
    """PING the configured Redis (REDIS_URL, plain, TLS or Sentinel) through the project's
    one client factory."""
    from controlplane.common.redis import redis_client

    try:
        return bool(redis_client().ping())
    except redis.RedisError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--redis", action="store_true", help="also wait for the Redis of REDIS_URL")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.redis:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
        django.setup()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if http_ok(args.url) and (not args.redis or redis_ok()):
            return 0
        time.sleep(POLL_SECONDS)
    what = f"{args.url} or Redis" if args.redis else args.url
    print(f"demo_wait: {what} not answering after {args.timeout}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
