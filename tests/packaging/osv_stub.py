"""A stand-in for the OSV vulnerability service (`POST /v1/query`) on loopback.

The real service is outside the project and out of this machine's reach, so the audit's
end-to-end test points pip-audit at this one (`-s osv --osv-url`). It answers with the
advisories it is given, matched by package and affected version range as OSV does, and fails
(HTTP 503) for the packages named in `failing`, as an unreachable or broken service would.

`python -m tests.packaging.osv_stub record` re-records the audit fixtures with pip-audit
(tests/packaging/fixtures/audit/README.md says what each one is).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "audit"
STUB_PORT = 17310  # this suite's private loopback range is 17300-17399


def advisory(
    vuln_id: str, package: str, introduced: str, fixed: str, summary: str, aliases: tuple[str, ...] = ()
) -> dict[str, Any]:
    """An OSV record: `package` versions from `introduced` up to (not including) `fixed`."""
    return {
        "schema_version": "1.6.0",
        "id": vuln_id,
        "aliases": list(aliases),
        "summary": summary,
        "affected": [
            {
                "package": {"name": package, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": introduced}, {"fixed": fixed}]}],
            }
        ],
    }


# From Django's 5.2.19 release notes (the security fixes over 5.2.18).
DJANGO_5_2_19_FIXES = [
    advisory("CVE-2026-108147", "django", "5.2", "5.2.19", "Potential memory exhaustion in MultiPartParser"),
    advisory(
        "CVE-2026-111211", "django", "5.2", "5.2.19", "Potential log injection via geometry form values"
    ),
    advisory("CVE-2026-111362", "django", "5.2", "5.2.19", "SSRF via the crs member of GeoJSON geometries"),
    advisory("CVE-2026-113593", "django", "5.2", "5.2.19", "Private data exposure via empty Vary headers"),
    advisory("CVE-2026-114582", "django", "5.2", "5.2.19", "SSRF via SpatialReference string input"),
]


def _affects(record: dict[str, Any], name: str, version: Version) -> bool:
    for affected in record["affected"]:
        if affected["package"]["name"] != name:
            continue
        for events in affected["ranges"]:
            bounds = {key: Version(value) for event in events["events"] for key, value in event.items()}
            if bounds["introduced"] <= version < bounds["fixed"]:
                return True
    return False


class OsvStub:
    """The service, in a thread of the test process: `with OsvStub(advisories) as url: ...`."""

    def __init__(
        self, advisories: list[dict[str, Any]], failing: frozenset[str] = frozenset(), port: int = STUB_PORT
    ) -> None:
        self.advisories = advisories
        self.failing = failing
        self.queries: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name, version = query["package"]["name"], query["version"]
                stub.queries.append((name, version))
                if name in stub.failing:
                    self.send_error(503, "service unavailable")
                    return
                found = [a for a in stub.advisories if _affects(a, name, Version(version))]
                body = json.dumps({"vulns": found} if found else {}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: pip-audit asks ~120 times
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="osv-stub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def audit_script() -> ModuleType:
    """scripts/audit.py as a module (scripts/ is no package)."""
    if "audit_script" in sys.modules:
        return sys.modules["audit_script"]
    spec = importlib.util.spec_from_file_location("audit_script", ROOT / "scripts" / "audit.py")
    if spec is None or spec.loader is None:
        raise ImportError("scripts/audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_script"] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def pip_audit(
    requirements: Path, report: Path, osv_url: str, cache: Path
) -> subprocess.CompletedProcess[str]:
    """pip-audit exactly as `make audit` runs it, against the given OSV endpoint."""
    extra = ["-s", "osv", "--osv-url", osv_url, "--cache-dir", str(cache)]
    command = audit_script().pip_audit_command(requirements, report, extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def record() -> None:
    """Re-record the fixtures made with the stub (see the fixtures' README)."""
    with tempfile.TemporaryDirectory() as tmp, OsvStub(DJANGO_5_2_19_FIXES) as url:
        for pins, name in (
            ("pins-locked.txt", "report-clean.json"),
            ("pins-django-5.2.18.txt", "report-django-5.2.18.json"),
        ):
            pip_audit(FIXTURES / pins, FIXTURES / name, url, Path(tmp))
            print(f"recorded {FIXTURES / name}")


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()
