"""PROMETHEUS_MULTIPROC_DIR stays bounded: short-lived manage.py commands leave no metric
files, and a process group's start-up reset never deletes the files of a live process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controlplane.common.multiproc import command_records_multiprocess, multiprocess_scope_for_command
from reconcilers.runtime.metrics import multiprocess_dir_reset, multiprocess_file_pid
from tests.runtime.conftest import REPO_ROOT, subprocess_env

COMMANDS = 200

# One fresh interpreter that has not imported prometheus_client (it picks files or memory
# at import) forks one child per command; each child goes through manage.py's main() as
# `python manage.py <command>` would. Forking spares 200 interpreter and library start-ups;
# Django's setup, the app registry and the metrics all happen in the child.
FORK_RUNNER = textwrap.dedent(
    """
    import importlib, json, os, sys
    sys.dont_write_bytecode = False  # the first child caches the bytecode the others then load
    for module in PREIMPORT:
        importlib.import_module(module)
    # Caches a child would fill the same way: every time zone (django-celery-beat's model
    # field loads them all) and the settings module.
    import zoneinfo
    for name in zoneinfo.available_timezones():
        zoneinfo.ZoneInfo(name)
    from django.conf import settings
    settings.INSTALLED_APPS
    assert "prometheus_client" not in sys.modules
    import manage
    argvs = json.loads(sys.argv[1])
    codes = []
    for argv in argvs:
        pid = os.fork()
        if pid == 0:
            sys.argv = ["manage.py", *argv]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            code = 0
            try:
                manage.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                code = 3
            os._exit(code)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(json.dumps(codes))
    """
)


# Libraries the runner imports once before forking (none of them imports prometheus_client).
PREIMPORT = (
    "celery",
    "django.core.management",
    "django.db.models",
    "django.forms",
    "django.http",
    "django.template",
    "django.views.generic",
    "django.contrib.admin",
    "django.db.backends.postgresql.base",
    "psycopg",
    "pydantic",
    "redis",
    "httpx",
    "environs",
    "timezone_field.fields",
    "django.contrib.admin.options",
)
RUNNERS = 2  # forking runners side by side, each with its share of the commands


def run_commands(argvs: list[list[str]], metrics_dir: Path) -> list[int]:
    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    code = FORK_RUNNER.replace("PREIMPORT", repr(PREIMPORT))
    shares = [argvs[i::RUNNERS] for i in range(RUNNERS) if argvs[i::RUNNERS]]
    runners = [
        subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(share)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    codes: list[int] = []
    for runner in runners:
        out, err = runner.communicate(timeout=1750)
        assert runner.returncode == 0, err[-3000:]
        codes += json.loads(out.strip().splitlines()[-1])
    return codes


def test_only_long_lived_commands_record_multiprocess_metrics() -> None:
    assert command_records_multiprocess(["manage.py", "runcontrollers"])
    assert command_records_multiprocess(["manage.py", "runserver", "--noreload"])
    for argv in (
        ["manage.py"],
        ["manage.py", "enqueue", "acme"],
        ["manage.py", "migrate"],
        ["manage.py", "shell"],
    ):
        assert not command_records_multiprocess(argv)
    env = {"PROMETHEUS_MULTIPROC_DIR": "/tmp/x", "OTHER": "1"}
    multiprocess_scope_for_command(["manage.py", "reconcile", "agent-health"], env)
    assert env == {"OTHER": "1"}
    env = {"PROMETHEUS_MULTIPROC_DIR": "/tmp/x"}
    multiprocess_scope_for_command(["manage.py", "runcontrollers"], env)
    assert env == {"PROMETHEUS_MULTIPROC_DIR": "/tmp/x"}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 200 Django start-ups: about 0.6 s of CPU each, longer on a busy machine
@pytest.mark.django_db(transaction=True)
def test_200_short_lived_commands_leave_the_metric_directory_flat(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # The harness sees files when a process writes them: a long-lived command's start-up
    # (runserver parses --help after Django's setup) leaves its five.
    assert run_commands([["runserver", "--help"]], metrics_dir) == [0]
    before = sorted(p.name for p in metrics_dir.iterdir())
    assert len(before) == 5, before

    # Commands that load every app (ready() pre-creates the controller series) and write.
    argvs = [
        ["enqueue", "soak", "--create-tenant", "--count", "1"] if i % 4 == 0 else ["version"]
        for i in range(COMMANDS)
    ]
    codes = run_commands(argvs, metrics_dir)
    assert codes == [0] * COMMANDS
    assert sorted(p.name for p in metrics_dir.iterdir()) == before


def test_reset_keeps_the_files_of_live_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(ended.stdout)
    live_pid = os.getppid()  # a running process other than this one, e.g. a web worker
    names = {
        "live": [f"counter_{live_pid}.db", f"gauge_livesum_{live_pid}.db"],
        "own": [f"histogram_{os.getpid()}.db"],
        "dead": [f"counter_{dead_pid}.db", f"gauge_mostrecent_{dead_pid}.db", "stray.db"],
    }
    for group in names.values():
        for name in group:
            (metrics_dir / name).write_bytes(b"x")
    (metrics_dir / "subdir").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))

    multiprocess_dir_reset(keep_pid=os.getpid())

    assert sorted(p.name for p in metrics_dir.iterdir()) == sorted(names["live"] + names["own"])


def test_multiprocess_file_pid() -> None:
    assert multiprocess_file_pid("counter_123.db") == 123
    assert multiprocess_file_pid("gauge_livesum_7.db") == 7
    assert multiprocess_file_pid("stray.db") is None
    assert multiprocess_file_pid("counter_12.tmp") is None
