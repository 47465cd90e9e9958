"""The admin in a real browser (headless Debian Chromium): tune a controller, dry-run it, see the run.

Explicit binary paths: Selenium must never try to download a browser or a driver.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from reconcilers.models import ReconcilerConfig, ReconcileRun, RunOutcome
from reconcilers.registry import controller_names

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 20
CONTROLLER = "agent-health"
NEW_INTERVAL_SECONDS = 45

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="chromium/chromedriver missing (.ci/install-system-packages installs them)",
    ),
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_tune_a_controller_dry_run_it_and_see_the_run(
    browser: Any, live_server: Any, transactional_db: Any, redis_client: Any, settings: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    if CONTROLLER not in controller_names():
        pytest.skip(f"{CONTROLLER} is not registered")
    # The live server runs in this process: runs from the admin run here (the Celery path and a
    # real worker are in tests/ops/test_browser_demo.py).
    settings.RECONCILERS_ADMIN_RUNS = "inprocess"
    wait = WebDriverWait(browser, WAIT_SECONDS)
    User.objects.create_superuser("browser-admin", "b@example.com", "browser-pass-1234")
    config = ReconcilerConfig.objects.get(controller=CONTROLLER)
    assert config.interval_seconds != NEW_INTERVAL_SECONDS
    assert not config.dry_run

    # Log in.
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("browser-admin")
    browser.find_element(By.NAME, "password").send_keys("browser-pass-1234")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "reconcilers-dashboard-link")))

    # Change the interval and the dry-run flag in the config's change form.
    browser.get(f"{live_server.url}/admin/reconcilers/reconcilerconfig/{config.pk}/change/")
    interval = wait.until(ec.presence_of_element_located((By.ID, "id_interval_seconds")))
    interval.clear()
    interval.send_keys(str(NEW_INTERVAL_SECONDS))
    dry_run = browser.find_element(By.ID, "id_dry_run")
    if not dry_run.is_selected():
        dry_run.click()
    browser.find_element(By.NAME, "_save").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li.success")))
    config.refresh_from_db()
    assert config.interval_seconds == NEW_INTERVAL_SECONDS
    assert config.dry_run is True

    # The dashboard shows the new settings; "Dry-run now" runs it and the run appears.
    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.CSS_SELECTOR, "#reconcilers-dashboard-link a").click()
    panel = wait.until(ec.presence_of_element_located((By.ID, f"controller-{CONTROLLER}")))
    assert panel.find_element(By.CLASS_NAME, "rc-interval").text == f"{NEW_INTERVAL_SECONDS} s"
    assert panel.find_element(By.CLASS_NAME, "rc-dry-run").text == "on"
    assert "no runs yet" in panel.text
    panel.find_element(By.CSS_SELECTOR, "input[name=dry-run-now]").click()
    message = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist li")))
    assert f"{CONTROLLER}: dry run success, would change" in message.text.lower()  # the admin capitalises it
    panel = browser.find_element(By.ID, f"controller-{CONTROLLER}")
    rows = panel.find_elements(By.CSS_SELECTOR, "tr.rc-run")
    assert len(rows) == 1
    assert "success" in rows[0].text
    assert "yes" in rows[0].text  # the dry-run column
    run = ReconcileRun.objects.get(controller=CONTROLLER)
    assert run.dry_run
    assert run.outcome == RunOutcome.SUCCESS
    assert panel.find_element(By.CLASS_NAME, "rc-fence").text == str(run.fence)
    assert panel.find_elements(By.CSS_SELECTOR, "svg.rc-chart circle")


def _login(browser: Any, url: str, username: str, password: str) -> bool:
    """Submit the login form and wait for the answer; False when the login page itself was
    refused (a locked-out address gets the lockout page instead of the form)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/admin/login/")
    if not browser.find_elements(By.NAME, "username"):
        return False
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(password)
    submit_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "input[type=submit]"))
    return True


def submit_and_wait(browser: Any, button: Any) -> None:
    """Click a button that submits a form and wait until the answer's document has loaded.

    The answer is a new document: mark the old one and wait until the loaded page lacks the
    mark (a click returns before the navigation, and a `get` issued meanwhile races it).
    Element staleness is not usable here: mid-navigation Chromium may answer a question about
    the old form with an inspector error ("Node with given id does not belong to the
    document") instead of "stale element", and a script run mid-navigation may fail the same
    way, so such errors only mean "ask again".
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("document.documentElement.dataset.submitted = 'yes'")
    button.click()
    WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: driver.execute_script(
            "return document.readyState === 'complete'"
            " && document.documentElement.dataset.submitted === undefined"
        )
    )


def test_least_privilege_lockout_and_secrets_in_the_browser(
    browser: Any, live_server: Any, transactional_db: Any, redis_client: Any, settings: Any
) -> None:
    """issue 16 in the admin: a staff user with only the general config permission sees
    audit-retention read-only and gets a 403 for Run now on it; a bootstrap token is shown on
    the page that answers the save and in no cookie; five wrong passwords lock the sixth
    attempt out, the right password included."""
    from django.contrib.auth.models import Permission
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from controlplane.audit.models import AuditLog
    from controlplane.tokens.models import BootstrapToken

    wait = WebDriverWait(browser, WAIT_SECONDS)
    settings.AXES_FAILURE_LIMIT = 5
    tuner = User.objects.create_user("tuner", password="tuner-pass-1234", is_staff=True)
    tuner.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_reconcilerconfig", "change_reconcilerconfig", "add_bootstraptoken"]
        )
    )
    retention = ReconcilerConfig.objects.get(controller="audit-retention")
    audit_rows = AuditLog.objects.count()

    _login(browser, live_server.url, "tuner", "tuner-pass-1234")
    wait.until(ec.presence_of_element_located((By.ID, "user-tools")))

    # audit-retention's change page is read-only for this user: no params box, no save button.
    browser.get(f"{live_server.url}/admin/reconcilers/reconcilerconfig/{retention.pk}/change/")
    wait.until(ec.presence_of_element_located((By.ID, "content")))
    assert not browser.find_elements(By.ID, "id_params")
    assert not browser.find_elements(By.NAME, "_save")

    # Run now on it from the list: 403, nothing ran, nothing audited.
    browser.get(f"{live_server.url}/admin/reconcilers/reconcilerconfig/")
    checkbox = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f"input.action-select[value='{retention.pk}']"))
    )
    checkbox.click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("run_now")
    browser.find_element(By.NAME, "index").click()
    wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    assert "403" in browser.page_source or "Forbidden" in browser.page_source
    assert not ReconcileRun.objects.filter(controller="audit-retention").exists()
    assert AuditLog.objects.count() == audit_rows

    # A new bootstrap token: on the page that answers the save, in no cookie.
    browser.get(f"{live_server.url}/admin/tokens/bootstraptoken/add/")
    wait.until(ec.presence_of_element_located((By.ID, "id_description"))).send_keys("browser")
    browser.find_element(By.NAME, "_save").click()
    secret = wait.until(ec.presence_of_element_located((By.ID, "secret-shown-once"))).text
    assert secret.startswith("cpb_")
    assert BootstrapToken.objects.filter(description="browser").exists()
    browser.get(f"{live_server.url}/admin/")
    assert all(secret not in cookie["value"] for cookie in browser.get_cookies())
    assert secret not in browser.page_source

    # Lockout: five wrong passwords, then the right one is refused too.
    browser.delete_all_cookies()
    for _ in range(5):
        assert _login(browser, live_server.url, "tuner", "wrong-password")
    assert "locked" in browser.page_source.lower()  # the fifth failure locks out (django-axes)
    # The right password now: refused, whether the form is still offered or not.
    _login(browser, live_server.url, "tuner", "tuner-pass-1234")
    wait.until(ec.presence_of_element_located((By.TAG_NAME, "body")))
    assert "locked" in browser.page_source.lower()
    assert not browser.find_elements(By.ID, "user-tools")
