"""The dependency audit gate (`make audit`): the allow-list, and the pass/fail logic on recorded
pip-audit reports; end to end, pip-audit in strict mode against a stand-in vulnerability service."""

from __future__ import annotations

import datetime
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.packaging.osv_stub import DJANGO_5_2_19_FIXES, FIXTURES, ROOT, OsvStub, advisory

SCRIPT = ROOT / "scripts" / "audit.py"
ALLOW_LIST = ROOT / "requirements" / "audit-allow.toml"
TODAY = datetime.date(2026, 11, 30)
DJANGO_CVES = [record["id"] for record in DJANGO_5_2_19_FIXES]


def audit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def registry_packages() -> int:
    """Every package version uv.lock takes from an index: what a full audit must cover."""
    packages = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    return sum(1 for package in packages if "registry" in package.get("source", {}))


def allow_list(tmp_path: Path, *entries: dict[str, str]) -> Path:
    path = tmp_path / "allow.toml"
    lines = []
    for entry in entries:
        lines.append("[[allow]]")
        lines += [
            f"{key} = {value}" if key == "expires" else f"{key} = {value!r}" for key, value in entry.items()
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def django_entry(vuln_id: str, expires: str = "2027-01-31") -> dict[str, str]:
    return {
        "package": "Django",
        "id": vuln_id,
        "reason": "Only GIS and upload paths are affected; the upgrade lands with the next lock refresh.",
        "expires": expires,
    }


def gate(report: str, allow: Path, today: datetime.date = TODAY) -> subprocess.CompletedProcess[str]:
    return audit("gate", "--report", FIXTURES / report, "--allow-list", allow, "--today", today.isoformat())


# -- the allow-list, as `make test` checks it ----------------------------------------------------


def test_the_allow_list_is_complete_and_current() -> None:
    result = audit("check-allow-list", ALLOW_LIST)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"package": "django", "id": "CVE-1", "expires": "2027-01-31"}, "lacks reason"),
        ({"package": "django", "id": "CVE-1", "reason": "accepted for now, see ticket"}, "lacks expires"),
        (
            {"package": "django", "id": "CVE-1", "reason": "fine", "expires": "2027-01-31"},
            "reason must say why",
        ),
        (
            {
                "package": "django",
                "id": "CVE-1",
                "reason": "accepted for now, see ticket",
                "expires": '"soon"',
            },
            "expires must be a TOML date",
        ),
        (
            {"package": "", "id": "CVE-1", "reason": "accepted for now, see ticket", "expires": "2027-01-31"},
            "package must be a non-empty",
        ),
    ],
)
def test_an_incomplete_allow_list_entry_is_refused(
    tmp_path: Path, entry: dict[str, str], complaint: str
) -> None:
    path = allow_list(tmp_path, entry)
    for result in (audit("check-allow-list", path), gate("report-clean.json", path)):
        assert result.returncode == 2
        assert "[[allow]] entry 1" in result.stderr
        assert complaint in result.stderr


def test_an_expired_allow_list_entry_fails_the_check(tmp_path: Path) -> None:
    path = allow_list(tmp_path, django_entry("CVE-2026-108147", expires="2026-11-29"))
    assert audit("check-allow-list", path, "--today", "2026-11-29").returncode == 0  # its last day
    result = audit("check-allow-list", path, "--today", TODAY.isoformat())
    assert result.returncode == 1
    assert "CVE-2026-108147 (django) expired on 2026-11-29" in result.stdout


# -- the gate on recorded reports ----------------------------------------------------------------


def test_the_gate_passes_a_clean_report() -> None:
    result = gate("report-clean.json", ALLOW_LIST)
    assert result.returncode == 0, result.stdout
    assert "audit: passed (123 dependencies audited)" in result.stdout


def test_the_gate_fails_on_an_unlisted_vulnerability(tmp_path: Path) -> None:
    result = gate("report-django-5.2.18.json", allow_list(tmp_path))
    assert result.returncode == 1
    for cve in DJANGO_CVES:
        assert f"django 5.2.18: {cve}, fixed in 5.2.19; not in the allow-list" in result.stdout


def test_the_gate_passes_once_every_vulnerability_is_allow_listed(tmp_path: Path) -> None:
    result = gate("report-django-5.2.18.json", allow_list(tmp_path, *map(django_entry, DJANGO_CVES)))
    assert result.returncode == 0, result.stdout
    assert "5 allow-listed" in result.stdout
    # One left out: that one, and only that one, fails the gate.
    result = gate("report-django-5.2.18.json", allow_list(tmp_path, *map(django_entry, DJANGO_CVES[1:])))
    assert result.returncode == 1
    assert DJANGO_CVES[0] in result.stdout
    assert not any(cve in result.stdout for cve in DJANGO_CVES[1:])


def test_an_entry_for_another_package_allows_nothing(tmp_path: Path) -> None:
    entries = [{**django_entry(cve), "package": "djangorestframework"} for cve in DJANGO_CVES]
    assert gate("report-django-5.2.18.json", allow_list(tmp_path, *entries)).returncode == 1


def test_the_gate_fails_on_an_expired_allow_list_entry(tmp_path: Path) -> None:
    entries = [django_entry(cve) for cve in DJANGO_CVES[1:]] + [
        django_entry(DJANGO_CVES[0], expires="2026-11-01")
    ]
    result = gate("report-django-5.2.18.json", allow_list(tmp_path, *entries))
    assert result.returncode == 1
    assert f"allow-list entry {DJANGO_CVES[0]} (django) expired on 2026-11-01" in result.stdout
    assert f"django 5.2.18: {DJANGO_CVES[0]}, fixed in 5.2.19; not in the allow-list" in result.stdout
    # An expired entry fails even when the report no longer has its vulnerability.
    assert gate("report-clean.json", allow_list(tmp_path, entries[-1])).returncode == 1


def test_the_gate_fails_when_a_dependency_could_not_be_audited() -> None:
    """What pip-audit wrote here without --strict, with PyPI's service out of reach: every
    package skipped, and "No known vulnerabilities found"."""
    result = gate("report-service-unreachable.json", ALLOW_LIST)
    assert result.returncode == 1
    assert "django was not audited: Dependency not found on PyPI and could not be audited" in result.stdout


def test_make_audit_runs_the_strict_audit_of_the_lock() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "-o", f"{sys.prefix}/bin/django-admin", "audit", f"VENV={sys.prefix}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "scripts/audit.py run --allow-list requirements/audit-allow.toml" in dry_run


# -- end to end: pip-audit over the whole lock ---------------------------------------------------


def test_audit_run_end_to_end_against_a_vulnerability_service(tmp_path: Path) -> None:
    """`scripts/audit.py run` (what `make audit` runs) over uv.lock: pip-audit in strict mode
    against the stand-in service; a finding fails until allow-listed (here by its alias); a
    package the service cannot answer for fails the audit."""
    finding = advisory("TEST-2026-0001", "sqlparse", "0", "99", "test advisory", aliases=("CVE-TEST-0001",))
    osv = ["-s", "osv", "--cache-dir", str(tmp_path / "cache")]
    allowed = allow_list(tmp_path, {**django_entry("TEST-2026-0001"), "package": "sqlparse"})
    with OsvStub([finding]) as url:
        run: list[str | Path] = [
            "run",
            "--allow-list",
            ALLOW_LIST,
            "--out",
            tmp_path / "out",
            "--today",
            TODAY.isoformat(),
        ]
        found = audit(*run, "--", *osv, "--osv-url", url)
        assert found.returncode == 1, found.stdout + found.stderr
        assert (
            "sqlparse 0.6.1: CVE-TEST-0001 (TEST-2026-0001), fixed in 99; not in the allow-list"
            in found.stdout
        )
        run[2] = allowed
        passed = audit(*run, "--", *osv, "--osv-url", url)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert f"audit: passed ({registry_packages()} dependencies audited, 1 allow-listed)" in passed.stdout
    with OsvStub([], failing=frozenset({"celery"})) as url:
        failed = audit(*run, "--", *osv, "--osv-url", url)
    assert failed.returncode == 1
    assert "pip-audit wrote no report" in failed.stdout
