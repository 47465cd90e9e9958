"""A minimal agent for the controlplane agent API, written against its OpenAPI schema (/api/schema/).

Standard library only. It registers with a bootstrap token, heartbeats, claims one job,
starts it, reports progress and completes it, echoing each answer. Every operation and
field it uses is in the schema; tests/api/test_example_client.py runs it against a live
server and checks that it uses nothing the schema does not declare.

    python docs/examples/agent_client.py --base-url http://127.0.0.1:8000 --token cpb_...

A real agent loops: heartbeat every `heartbeat_interval_seconds`, claim when it has room,
and send each report with the job's `attempt` (a report for an older attempt gets 409:
the job moved on, drop it).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

# The operations this client uses, as (method, path in the schema).
OPERATIONS = (
    ("post", "/api/v1/agents/register"),
    ("post", "/api/v1/agents/heartbeat"),
    ("post", "/api/v1/jobs/claim"),
    ("post", "/api/v1/jobs/{job_id}/start"),
    ("post", "/api/v1/jobs/{job_id}/progress"),
    ("post", "/api/v1/jobs/{job_id}/complete"),
)


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error')}: {body.get('detail')}")
        self.status = status
        self.body = body


class AgentClient:
    def __init__(self, base_url: str, api_key: str = "", timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:  # every error body is {"error", "detail"}
            raise ApiError(exc.code, json.loads(exc.read() or b"{}")) from None

    def register(self, bootstrap_token: str, name: str, capabilities: list[str]) -> dict[str, Any]:
        _, body = self._post(
            "/api/v1/agents/register",
            {"bootstrap_token": bootstrap_token, "name": name, "capabilities": capabilities},
        )
        self.api_key = body["api_key"]  # shown once: keep it safe
        return body

    def heartbeat(self) -> dict[str, Any]:
        return self._post("/api/v1/agents/heartbeat")[1]

    def claim(self) -> dict[str, Any] | None:
        status, body = self._post("/api/v1/jobs/claim")
        return None if status == 204 else body

    def start(self, job_id: int, attempt: int) -> dict[str, Any]:
        return self._post(f"/api/v1/jobs/{job_id}/start", {"attempt": attempt})[1]

    def progress(self, job_id: int, attempt: int, message: str) -> dict[str, Any]:
        return self._post(f"/api/v1/jobs/{job_id}/progress", {"attempt": attempt, "message": message})[1]

    def complete(self, job_id: int, attempt: int) -> dict[str, Any]:
        return self._post(f"/api/v1/jobs/{job_id}/complete", {"attempt": attempt})[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="a bootstrap token (cpb_...)")
    parser.add_argument("--name", default="example-agent")
    args = parser.parse_args(argv)

    agent = AgentClient(args.base_url)
    registered = agent.register(args.token, args.name, ["example"])
    print("registered agent", registered["agent_id"])
    print("heartbeat", agent.heartbeat())
    job = agent.claim()
    if job is None:
        print("no job waiting")
        return 0
    print("claimed", job)
    agent.start(job["job_id"], job["attempt"])
    agent.progress(job["job_id"], job["attempt"], "halfway")
    print("completed", agent.complete(job["job_id"], job["attempt"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
