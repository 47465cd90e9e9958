"""Reading uv.lock: the packages a locked set installs on one platform, and their wheel tags."""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "uv.lock"
PROJECT = "controlplane"
# uv spells a dependency group in its markers as an extra of this form.
GROUP_EXTRA = "group-{length}-{project}-{group}"


def lock_load(path: Path = LOCK) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def linux_cpython(minor: str, machine: str) -> dict[str, str]:
    """The marker environment of CPython `minor` (e.g. "3.11") on Linux `machine`."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{minor}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{minor}.0",
        "python_version": minor,
        "sys_platform": "linux",
        "extra": "",
    }


def installed_set(
    lock: dict[str, Any],
    environment: dict[str, str],
    *,
    extras: tuple[str, ...] = (),
    group: str = "django52",
) -> dict[str, dict[str, Any]]:
    """Name -> locked package of everything the project's set installs in `environment`."""
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for package in lock["package"]:
        by_name[package["name"]].append(package)
    (project,) = by_name[PROJECT]
    group_extra = GROUP_EXTRA.format(length=len(PROJECT), project=PROJECT, group=group)
    roots = list(project.get("dependencies", []))
    roots += project.get("dev-dependencies", {}).get(group, [])
    for extra in extras:
        roots += project["optional-dependencies"][extra]
    # Markers in the lock may name the group (as an extra) at any depth: the fork it belongs to.
    environment = {**environment, "extra": group_extra}
    pending = [(dependency, environment) for dependency in roots]
    found: dict[str, dict[str, Any]] = {}
    extras_done: set[tuple[str, str]] = set()
    while pending:
        dependency, env = pending.pop()
        if "marker" in dependency and not Marker(dependency["marker"]).evaluate(env):
            continue
        candidates = by_name[dependency["name"]]
        if "version" in dependency:
            candidates = [p for p in candidates if p["version"] == dependency["version"]]
        (package,) = candidates
        name = package["name"]
        if name in found and found[name]["version"] != package["version"]:
            raise AssertionError(
                f"two versions of {name} in one set: {found[name]['version']}, {package['version']}"
            )
        new = name not in found
        found[name] = package
        if new:
            pending += [(d, environment) for d in package.get("dependencies", [])]
        for extra in dependency.get("extra", []):
            if (name, extra) not in extras_done:
                extras_done.add((name, extra))
                pending += [(d, environment) for d in package.get("optional-dependencies", {}).get(extra, [])]
    return found


def wheel_files(package: dict[str, Any]) -> list[str]:
    return [wheel["url"].rsplit("/", 1)[1] for wheel in package.get("wheels", [])]


def installs_from_a_wheel(package: dict[str, Any], minor: str, machine: str) -> bool:
    """True when pip finds a wheel for CPython `minor` on manylinux `machine`: pure Python,
    built for that CPython, or built for the stable ABI of an older one."""
    wanted = int(minor.split(".")[1])
    platform = re.compile(rf"^manylinux(1|2010|2014|_\d+_\d+)_{machine}$")
    for filename in wheel_files(package):
        for tag in parse_wheel_filename(filename)[3]:
            if not (tag.platform == "any" or platform.match(tag.platform)):
                continue
            if tag.abi == "none" and tag.interpreter in ("py3", f"py3{wanted}", f"cp3{wanted}"):
                return True
            if tag.abi == f"cp3{wanted}" and tag.interpreter == f"cp3{wanted}":
                return True
            built_for = re.fullmatch(r"cp3(\d+)", tag.interpreter)
            if tag.abi == "abi3" and built_for and int(built_for.group(1)) <= wanted:
                return True
    return False
