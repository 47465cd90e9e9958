"""The dependency audit: pip-audit over every package uv.lock pins, then the allow-list gate.

    python scripts/audit.py run --allow-list FILE [--out DIR] [-- PIP_AUDIT_ARGS]
    python scripts/audit.py gate --report REPORT.json --allow-list FILE [--today YYYY-MM-DD]
    python scripts/audit.py check-allow-list FILE [--today YYYY-MM-DD]

`run` audits what the lock pins, on every Python and platform and in both Django sets, not
just what this venv happens to have: pip-audit gets each package as `name==version` (in
layers, since it refuses two versions of one name in one file), in strict mode, so a package
it could not check fails the audit instead of passing it. Its JSON reports are merged into
one, which `gate` then judges.

`gate` passes when every dependency was checked and every vulnerability found is allow-listed
by an entry that has not expired. An allow-list entry (TOML, `[[allow]]`) names the `package`,
the vulnerability `id` (or one of its aliases, such as a CVE), a `reason` and an `expires`
date; an entry without them, or past its date, fails the gate. Exit status: 0 pass, 1 fail,
2 bad usage or input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRY_FIELDS = ("package", "id", "reason", "expires")
MIN_REASON_CHARS = 10  # a word or two is not a reason


class InputError(Exception):
    """A report or allow-list that cannot be read: exit 2, naming the file and the field."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Allowance:
    package: str
    id: str
    reason: str
    expires: datetime.date


def allow_list_load(path: Path) -> list[Allowance]:
    """Every entry of the allow-list, each with all four fields; InputError names what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: {exc}") from exc
    unknown = set(data) - {"allow"}
    if unknown:
        raise InputError(f"{path}: unknown key(s) {sorted(unknown)}; entries go in [[allow]] tables")
    entries = data.get("allow", [])
    if not isinstance(entries, list):
        raise InputError(f"{path}: allow must be a list of [[allow]] tables")
    allowances = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: [[allow]] entry {number}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} is not a table")
        missing = [key for key in ENTRY_FIELDS if key not in entry]
        if missing:
            raise InputError(
                f"{where} lacks {', '.join(missing)} (each entry needs {', '.join(ENTRY_FIELDS)})"
            )
        extra = set(entry) - set(ENTRY_FIELDS)
        if extra:
            raise InputError(f"{where} has unknown field(s) {sorted(extra)}")
        for key in ("package", "id", "reason"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise InputError(f"{where}: {key} must be a non-empty string")
        if len(entry["reason"].strip()) < MIN_REASON_CHARS:
            raise InputError(
                f"{where}: reason must say why the risk is accepted (at least {MIN_REASON_CHARS} chars)"
            )
        expires = entry["expires"]
        if not isinstance(expires, datetime.date) or isinstance(expires, datetime.datetime):
            raise InputError(f"{where}: expires must be a TOML date such as 2027-01-31, not {expires!r}")
        allowances.append(
            Allowance(canonical(entry["package"]), entry["id"], entry["reason"].strip(), expires)
        )
    return allowances


def report_load(path: Path) -> list[dict[str, Any]]:
    """The dependencies of a pip-audit JSON report."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a pip-audit JSON report ({exc})") from exc
    dependencies = data.get("dependencies") if isinstance(data, dict) else None
    if not isinstance(dependencies, list):
        raise InputError(f"{path}: not a pip-audit JSON report (no dependencies list)")
    return dependencies


def gate(dependencies: list[dict[str, Any]], allowances: list[Allowance], today: datetime.date) -> list[str]:
    """The reasons the audit fails; empty when it passes."""
    failures = []
    if not dependencies:
        failures.append("the report lists no dependency: nothing was audited")
    for allowance in allowances:
        if allowance.expires < today:
            failures.append(
                f"allow-list entry {allowance.id} ({allowance.package}) expired on {allowance.expires}: "
                "upgrade the package, or renew the entry with a new reason and date"
            )
    live = [a for a in allowances if a.expires >= today]
    for dependency in dependencies:
        name = canonical(str(dependency.get("name", "?")))
        if "skip_reason" in dependency:
            failures.append(f"{name} was not audited: {dependency['skip_reason']}")
            continue
        for vuln in dependency.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            if any(a.package == name and a.id in ids for a in live):
                continue
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release yet"
            aliases = ", ".join(sorted(set(vuln.get("aliases", [])) - {vuln["id"]}))
            failures.append(
                f"{name} {dependency.get('version')}: {vuln['id']}"
                + (f" ({aliases})" if aliases else "")
                + f", fixed in {fixed}; not in the allow-list"
            )
    return failures


def gate_main(reports: list[Path], allow_list: Path, today: datetime.date) -> int:
    allowances = allow_list_load(allow_list)
    dependencies = [dep for report in reports for dep in report_load(report)]
    failures = gate(dependencies, allowances, today)
    vulns = sum(len(dep.get("vulns", [])) for dep in dependencies)
    if failures:
        print(f"audit: FAILED ({len(dependencies)} dependencies, {vulns} known vulnerabilities)")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    allowed = f", {vulns} allow-listed" if vulns else ""
    print(f"audit: passed ({len(dependencies)} dependencies audited{allowed})")
    return 0


def check_main(allow_list: Path, today: datetime.date) -> int:
    """The allow-list alone (`make test`): complete entries, none expired."""
    allowances = allow_list_load(allow_list)
    expired = [a for a in allowances if a.expires < today]
    for allowance in expired:
        print(f"audit: allow-list entry {allowance.id} ({allowance.package}) expired on {allowance.expires}")
    if expired:
        return 1
    print(f"audit: {allow_list}: {len(allowances)} entries, each with a reason and an expiry date to come")
    return 0


def lock_pins(lock: Path) -> list[list[str]]:
    """`name==version` of every package uv.lock takes from an index, in layers of distinct names."""
    packages = tomllib.loads(lock.read_text())["package"]
    versions: dict[str, list[str]] = defaultdict(list)
    for package in packages:
        if "registry" in package.get("source", {}):
            versions[package["name"]].append(package["version"])
    depth = max((len(v) for v in versions.values()), default=0)
    return [
        [f"{name}=={found[layer]}" for name, found in sorted(versions.items()) if layer < len(found)]
        for layer in range(depth)
    ]


def pip_audit_command(requirements: Path, report: Path, extra: list[str]) -> list[str]:
    """pip-audit in strict mode over exact pins (nothing installed), writing a JSON report."""
    command = [sys.executable, "-m", "pip_audit", "--strict", "--disable-pip", "--no-deps"]
    command += ["--progress-spinner", "off", "--aliases", "on", "--desc", "off", "--format", "json"]
    return [*command, "--requirement", str(requirements), "--output", str(report), *extra]


def run_main(lock: Path, allow_list: Path, out: Path, pip_audit_args: list[str], today: datetime.date) -> int:
    allow_list_load(allow_list)  # a broken allow-list fails before the slow part
    out.mkdir(parents=True, exist_ok=True)
    merged: list[dict[str, Any]] = []
    for number, pins in enumerate(lock_pins(lock), start=1):
        requirements = out / f"pins-{number}.txt"
        report = out / f"report-{number}.json"
        requirements.write_text("\n".join(pins) + "\n")
        report.unlink(missing_ok=True)
        print(f"audit: pip-audit of {len(pins)} pinned packages ({requirements})", flush=True)
        # It exits 1 on any finding as well as on an error: the report (or its absence) decides.
        subprocess.run(pip_audit_command(requirements, report, pip_audit_args), check=False)
        if not report.exists():
            print(
                "audit: FAILED: pip-audit wrote no report (see its error above). In strict mode a package "
                "it cannot check fails the audit: is the vulnerability service reachable?"
            )
            return 1
        merged += report_load(report)
    combined = out / "report.json"
    combined.write_text(json.dumps({"dependencies": merged, "fixes": []}, indent=1) + "\n")
    return gate_main([combined], allow_list, today)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="pip-audit every package of the lock, then the gate")
    run.add_argument("--lock", type=Path, default=ROOT / "uv.lock")
    run.add_argument("--allow-list", type=Path, required=True)
    run.add_argument("--out", type=Path, default=ROOT / "var" / "audit")
    run.add_argument("pip_audit_args", nargs="*", help="after --: passed to pip-audit (e.g. -s osv)")
    check = commands.add_parser("gate", help="judge recorded pip-audit JSON reports")
    check.add_argument("--report", type=Path, action="append", required=True)
    check.add_argument("--allow-list", type=Path, required=True)
    validate = commands.add_parser("check-allow-list", help="every entry complete and not expired")
    validate.add_argument("allow_list", type=Path)
    for sub in (run, check, validate):
        sub.add_argument("--today", type=datetime.date.fromisoformat, default=datetime.date.today())
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run_main(args.lock, args.allow_list, args.out, args.pip_audit_args, args.today)
        if args.command == "gate":
            return gate_main(args.report, args.allow_list, args.today)
        return check_main(args.allow_list, args.today)
    except InputError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
