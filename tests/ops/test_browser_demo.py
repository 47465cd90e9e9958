"""The operator's acceptance run, in headless Chromium against `make run` from a clean clone.

Within 60 s of start the overview shows every controller ok; pausing flips them all to
paused; a hand-broken row shows invalid config; a slowed purge started with Run now shows
running, and its run row comes from a worker process, not the web server; a crontab saved
in the admin moves the beat task to a CrontabSchedule and the running beat sends it at
the next minute, without a restart (that wait, up to about 70 s, is this test's main
cost). The dashboard's picture is saved under var/screenshots/ (`make screenshot` copies
it to docs/images/ for the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.ops.test_browser import CHROMEDRIVER, CHROMIUM, browser, submit_and_wait  # noqa: F401 (fixture)
from tests.ops.test_demo import ROOT, _free_port, _group_alive, _status

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) or shutil.which("make") is None,
        reason="chromium/chromedriver or make missing",
    ),
]

CONTROLLERS = ("agent-health", "job-recovery", "queue-priority", "token-cleanup", "audit-retention")
OK_WITHIN_SECONDS = 60  # of `make run`
SCREENSHOTS = ROOT / "var" / "screenshots"
SLOW_PURGE_ROWS = 20000  # with batch_size 1: one short transaction each, minutes of work


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`make demo` in a clone of the committed HEAD, on free ports; stopped like Ctrl-C."""
    clone = tmp_path / "controlplane"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    ports = {
        "DEMO_WEB_PORT": _free_port(),
        "DEMO_FLOWER_PORT": _free_port(),
        "DEMO_REDIS_PORT": _free_port(),
        "WORKER_METRICS_PORT": _free_port(),
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "REDIS_URL",
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "DEBUG",
            "FLOWER_BASIC_AUTH",
            "PROMETHEUS_MULTIPROC_DIR",
        )
    }
    env.update({k: str(v) for k, v in ports.items()})
    venv = Path(sys.prefix)
    log_path = clone / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["make", "-o", f"{venv}/bin/django-admin", "demo", f"VENV={venv}"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        yield {
            "clone": clone,
            "web": f"http://127.0.0.1:{ports['DEMO_WEB_PORT']}",
            "process": process,
            "log": log_path,
            "started": started,
            "database": clone / "var" / "controlplane.sqlite3",
        }
    finally:
        text = log_path.read_text(errors="replace")
        groups = {int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", text)}
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        for pgid in [*(g for g in groups if _group_alive(g)), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(clone, ignore_errors=True)


def _sql(database: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db, db:
        return list(db.execute(statement, params))


def _states(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {
        row.get_attribute("id").removeprefix("overview-"): row.get_attribute("data-state")
        for row in driver.find_elements(By.CSS_SELECTOR, "tr.rc-overview-row")
    }


def _until(what: str, check: Any, timeout: float, log: Path, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s\n{log.read_text()[-3000:]}"
        time.sleep(interval)


def test_operator_acceptance_on_make_run(browser: Any, demo: dict[str, Any]) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    web, log, database = demo["web"], demo["log"], demo["database"]
    dashboard = f"{web}/admin/reconcilers/dashboard/"
    password_file = demo["clone"] / "var/demo/admin-password"
    _until("the admin", lambda: password_file.exists() and _status(f"{web}/admin/login/") == 200, 60, log)

    browser.get(f"{web}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(password_file.read_text().strip())
    submit_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "input[type=submit]"))
    _until("login", lambda: browser.find_elements(By.ID, "reconcilers-dashboard-link"), 20, log)

    # 1. Every controller ok within 60 s of start, each after a success of its own.
    def all_ok() -> bool:
        browser.get(dashboard)
        states = _states(browser)
        succeeded = {
            row[0]
            for row in _sql(
                database, "SELECT DISTINCT controller FROM reconcilers_reconcilerun WHERE outcome='success'"
            )
        }
        return set(CONTROLLERS) <= succeeded and states == dict.fromkeys(CONTROLLERS, "ok")

    remaining = OK_WITHIN_SECONDS - (time.monotonic() - demo["started"])
    _until("five rows ok", all_ok, max(remaining, 1), log)
    ok_after = time.monotonic() - demo["started"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))
    assert browser.find_elements(By.CSS_SELECTOR, "svg.rc-spark")

    # 2. Pausing flips all five to paused; resuming brings them back.
    browser.get(f"{web}/admin/reconcilers/globalpause/")
    browser.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("pause")
    submit_and_wait(browser, browser.find_element(By.NAME, "index"))
    browser.get(dashboard)
    assert _states(browser) == dict.fromkeys(CONTROLLERS, "paused")
    browser.get(f"{web}/admin/reconcilers/globalpause/")
    browser.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("resume")
    submit_and_wait(browser, browser.find_element(By.NAME, "index"))

    # 3. A row broken by hand shows invalid config (and nothing else changes).
    (stored,) = _sql(database, "SELECT params FROM reconcilers_reconcilerconfig WHERE name='token-cleanup'")[
        0
    ]
    _sql(
        database,
        "UPDATE reconcilers_reconcilerconfig SET params=? WHERE name='token-cleanup'",
        '{"grace_days": -1}',
    )
    browser.get(dashboard)
    states = _states(browser)
    assert states["token-cleanup"] == "invalid config"
    assert {states[name] for name in CONTROLLERS if name != "token-cleanup"} == {"ok"}
    _sql(database, "UPDATE reconcilers_reconcilerconfig SET params=? WHERE name='token-cleanup'", stored)

    # 4. A slowed purge, started with Run now: the admin answers at once, the overview
    # shows it running, and a worker process wrote its row.
    old = (datetime.now(UTC) - timedelta(days=800)).strftime("%Y-%m-%d %H:%M:%S")
    _insert_old_audit_rows(database, old)
    _sql(
        database,
        "UPDATE reconcilers_reconcilerconfig SET params=? WHERE name='audit-retention'",
        json.dumps({"batch_size": 1}),
    )
    browser.get(f"{web}/admin/reconcilers/reconcilerconfig/")
    row = browser.find_element(By.XPATH, "//tr[.//a[text()='audit-retention']]")
    row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("run_now")
    clicked = time.monotonic()
    submit_and_wait(browser, browser.find_element(By.NAME, "index"))
    message = browser.find_element(By.CSS_SELECTOR, "ul.messagelist li").text
    answered = time.monotonic() - clicked
    assert "sent to a worker as task" in message, message
    assert answered < 5
    task_id = message.split("task ", 1)[1].split(";", 1)[0].strip()

    def purge_running() -> bool:
        browser.get(dashboard)
        return _states(browser).get("audit-retention") == "running"

    _until("audit-retention running", purge_running, 30, log)
    runs = _sql(
        database, "SELECT worker_host, outcome FROM reconcilers_reconcilerun WHERE task_id=?", task_id
    )
    assert len(runs) == 1
    worker_host, outcome = runs[0]
    assert outcome == "running"
    web_pids = re.findall(r"web\.1 started \(pid=(\d+)\)", log.read_text())
    assert web_pids, log.read_text()[-2000:]
    assert not worker_host.endswith(f":{web_pids[0]}")  # not the web server
    assert _run_of_a_worker(log.read_text(), worker_host)

    # 5. A crontab saved in the admin: beat follows it at the next minute, no restart.
    (pk,) = _sql(database, "SELECT id FROM reconcilers_reconcilerconfig WHERE name='queue-priority'")[0]
    browser.get(f"{web}/admin/reconcilers/reconcilerconfig/{pk}/change/")
    browser.find_element(By.ID, "id_crontab").send_keys("* * * * *")
    timeout = browser.find_element(By.ID, "id_run_timeout_seconds")
    timeout.clear()
    timeout.send_keys("60")
    saved_at = datetime.now(UTC)
    submit_and_wait(browser, browser.find_element(By.NAME, "_save"))
    assert browser.find_elements(By.CSS_SELECTOR, "ul.messagelist li.success"), browser.page_source[-3000:]
    (crontab_id, interval_id) = _sql(
        database,
        "SELECT crontab_id, interval_id FROM django_celery_beat_periodictask "
        "WHERE name='reconcile queue-priority'",
    )[0]
    assert crontab_id is not None
    assert interval_id is None
    since = saved_at.strftime("%Y-%m-%d %H:%M:%S")

    def beat_sent_it() -> bool:
        rows = _sql(
            database,
            "SELECT COUNT(*) FROM reconcilers_reconcilerun WHERE controller='queue-priority' "
            "AND started_at > ? AND forced = 0 AND task_id != ''",
            since,
        )
        return bool(rows[0][0])

    saved = time.monotonic()
    _until("a beat-sent run of the crontab", beat_sent_it, 75, log, interval=2)
    print(
        f"overview all ok {ok_after:.1f}s after make run; Run now answered in {answered:.2f}s; "
        f"beat sent the new crontab's run {time.monotonic() - saved:.1f}s after the save"
    )


def _insert_old_audit_rows(database: Path, created_at: str) -> None:
    rows = [(created_at, "system:test", "test.old", "test", str(i), "{}", 1) for i in range(SLOW_PURGE_ROWS)]
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db, db:
        db.executemany(
            "INSERT INTO audit_auditlog "
            "(created_at, actor, action, resource_type, resource_id, details, success) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _run_of_a_worker(log_text: str, worker_host: str) -> bool:
    """The run's host:pid is a process of the worker's group (its pool child or itself)."""
    pid = int(worker_host.rsplit(":", 1)[1])
    worker_groups = [int(p) for p in re.findall(r"worker\.1 started \(pid=(\d+)\)", log_text)]
    try:
        return os.getpgid(pid) in worker_groups
    except ProcessLookupError:
        return False
