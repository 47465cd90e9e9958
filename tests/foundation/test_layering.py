"""The layering of design.md §2 is enforced by import-linter: it passes on the tree, and it
fails when any of the arrows it forbids is put back (checked on a copy of the packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (module file, import added at its end, the contract that must then break)
LATE_IMPORT = "def _late():\n    from reconcilers import registry"  # function-level imports count too
VIOLATIONS = [
    ("reconcilers/runtime/runner.py", "from reconcilers import registry", "runtime"),
    ("reconcilers/runtime/metrics.py", "from controlplane.agents import models", "runtime"),
    # A function-level import counts as much as a module-level one.
    (
        "reconcilers/controllers/job_recovery.py",
        "def _late():\n    from reconcilers import registry",
        "acyclic",
    ),
    (
        "reconcilers/controllers/job_recovery.py",
        "from reconcilers.controllers import queue_priority",
        "controllers-independent",
    ),
    ("reconcilers/controllers/token_cleanup.py", "from reconcilers import tasks", "controllers"),
    ("controlplane/commands/services.py", "from reconcilers import services", "domain"),
    ("controlplane/api/api.py", "from reconcilers.controllers import agent_health", "api"),
    ("controlplane/agents/services.py", "from controlplane.commands import models", "domain-layers"),
    ("reconcilers/selectors.py", "from reconcilers import services", "reconcilers-layers"),
]


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    only = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml"), *only],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layering")
    for package in ("controlplane", "reconcilers"):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_contract(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "statement", "contract"), VIOLATIONS)
def test_each_forbidden_arrow_breaks_its_contract(
    tree_copy: Path, module: str, statement: str, contract: str
) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(f"{original}\n{statement}  # deliberate violation\n")
    try:
        result = lint_imports(tree_copy, contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, f"{contract} kept:\n{result.stdout}"
    assert "1 broken" in result.stdout
