"""`.env.example`, the README's settings table and controlplane/settings.py name the same variables,
and the example's values are accepted by the settings module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Read by other programs than Django's settings: prometheus_client and Flower.
READ_ELSEWHERE = {"PROMETHEUS_MULTIPROC_DIR", "FLOWER_BASIC_AUTH"}


def settings_names() -> set[str]:
    source = (ROOT / "controlplane" / "settings.py").read_text()
    return set(re.findall(r'_read\(\s*"([A-Z][A-Z0-9_]*)"', source))


def readme_names() -> set[str]:
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def example_entries() -> dict[str, str]:
    entries = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def test_settings_readme_and_env_example_name_the_same_variables() -> None:
    in_settings = settings_names()
    assert len(in_settings) >= 25  # the parser found the settings at all
    expected = in_settings | READ_ELSEWHERE
    assert readme_names() == expected, (
        f"README only: {readme_names() - expected}; not in README: {expected - readme_names()}"
    )
    example = set(example_entries())
    assert example == expected, f".env.example only: {example - expected}; missing: {expected - example}"


def test_every_example_value_is_accepted_by_the_settings() -> None:
    """All lines of the example uncommented at once: settings load, and the values arrive."""
    entries = {name: value for name, value in example_entries().items() if name not in READ_ELSEWHERE}
    env = {key: value for key, value in os.environ.items() if key not in entries}
    env.update(entries)
    env.update({"DJANGO_SETTINGS_MODULE": "controlplane.settings", "PYTHONPATH": str(ROOT)})
    probe = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.RECONCILERS_ADMIN_RUNS, s.RECONCILERS_QUEUE, s.WORKER_METRICS_PORT, s.DEBUG, "
        "s.ALLOWED_HOSTS)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["celery", "reconcilers", "9808", "False", "['controlplane.example.com']"]
