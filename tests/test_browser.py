"""The two UIs in headless Debian Chromium (Selenium, /usr/bin/chromedriver; no browser download).

Uses the session's real stack (``live_stack``) and its finished run (``stack_run``). Screenshots
go to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
import time
import urllib.parse
from pathlib import Path

import pytest
from stack_fixtures import CONF, parent_and_children

from bnpipe.operations.stack import EXPERIMENT_DAG

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --window-size=1400,1000"
).split()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("Debian chromium / chromium-driver are not installed (make setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 45, what: str = ""):
    """Poll ``condition``; the React UIs re-render under us, so a stale element just means "poll again"."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(condition)
    except TimeoutException:
        driver.save_screenshot(str(ARTIFACTS / f"timeout-{int(time.time())}.png"))
        raise AssertionError(f"timed out waiting for {what} at {driver.current_url}") from None


def _click(driver, xpath: str, what: str) -> None:
    """Find and click in one poll, so a re-render between the two is retried rather than fatal."""
    from selenium.webdriver.common.by import By

    def attempt(d):
        found = d.find_elements(By.XPATH, xpath)
        if found:
            found[0].click()
        return bool(found)

    _wait(driver, attempt, what=what)


def _text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


@pytest.fixture(scope="module")
def logged_in(browser, live_stack):
    from selenium.webdriver.common.by import By

    browser.get(live_stack.airflow_url)
    _wait(browser, lambda d: d.find_elements(By.NAME, "username"), what="the login form")
    browser.find_element(By.NAME, "username").send_keys(live_stack.username)
    browser.find_element(By.NAME, "password").send_keys(live_stack.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(browser, lambda d: "/auth/login" not in d.current_url, what="the login to finish")
    return browser


def test_mlflow_ui_lists_the_variant_runs(browser, live_stack, stack_run):

    parent, children = parent_and_children(live_stack, stack_run["run_id"])
    browser.get(f"{live_stack.mlflow_url}/#/experiments/{parent['info']['experiment_id']}/runs")
    dag_run_id = stack_run["run_id"]
    # the expand button sits in the parent run's grid cell; clicking it shows the nested runs
    _click(
        browser,
        f"//a[normalize-space(.)='{dag_run_id}']/ancestor::*[@role='gridcell'][1]//button",
        what="the parent run (named after the DAG run)",
    )
    names = [c["info"]["run_name"] for c in children]
    _wait(browser, lambda d: all(n in _text(d) for n in names), what=f"variant runs {names}")
    browser.save_screenshot(str(ARTIFACTS / "mlflow-experiment.png"))


def test_results_view_inside_the_airflow_ui(logged_in, live_stack, stack_run):
    from selenium.webdriver.common.by import By

    rid = urllib.parse.quote(stack_run["run_id"], safe="")
    logged_in.get(f"{live_stack.airflow_url}/dags/{EXPERIMENT_DAG}/runs/{rid}")
    _click(logged_in, "//a[normalize-space(.)='bnpipe results']", what="the 'bnpipe results' tab")
    frame = _wait(logged_in, lambda d: d.find_elements(By.TAG_NAME, "iframe"), what="the view's iframe")[0]
    logged_in.switch_to.frame(frame)
    try:
        _, children = parent_and_children(live_stack, stack_run["run_id"])
        _wait(logged_in, lambda d: d.find_elements(By.ID, "comparison"), what="the comparison table")
        page = _text(logged_in)
        assert all(c["info"]["run_name"] in page for c in children)
        assert "champion" in page
    finally:
        logged_in.switch_to.default_content()
    logged_in.save_screenshot(str(ARTIFACTS / "airflow-results-view.png"))


def test_trigger_form_starts_a_run(logged_in, live_stack, stack_run):
    """Runs after the shared run has finished: change one Param in the form and trigger."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = {r["dag_run_id"] for r in live_stack.api("GET", f"/dags/{EXPERIMENT_DAG}/dagRuns?limit=100")["dag_runs"]}
    logged_in.get(f"{live_stack.airflow_url}/dags/{EXPERIMENT_DAG}")
    _click(logged_in, "//*[@data-testid='trigger-dag-button']", what="the Trigger button")
    epochs = _wait(logged_in, lambda d: d.find_elements(By.NAME, "element_epochs"), what="the epochs field")[0]
    # the Param descriptions; the form renders them after the fields, so poll rather than read once
    _wait(logged_in, lambda d: "Training epochs per variant." in _text(d) and "Data source." in _text(d),
          what="the Params' descriptions in the trigger form")  # fmt: skip
    epochs.send_keys(Keys.CONTROL, "a")
    epochs.send_keys(str(CONF["epochs"] + 1))
    logged_in.save_screenshot(str(ARTIFACTS / "airflow-trigger-form.png"))
    _click(logged_in, "//*[@role='dialog']//button[normalize-space(.)='Trigger']", what="the dialog's Trigger button")

    def new_run():
        runs = live_stack.api("GET", f"/dags/{EXPERIMENT_DAG}/dagRuns?limit=100")["dag_runs"]
        return next((r for r in runs if r["dag_run_id"] not in before), None)

    run = _wait(logged_in, lambda d: new_run(), what="the triggered run in the REST API")
    try:
        assert run["conf"]["epochs"] == CONF["epochs"] + 1
        logged_in.get(f"{live_stack.airflow_url}/dags/{EXPERIMENT_DAG}/runs")
        _wait(logged_in, lambda d: run["dag_run_id"] in _text(d), what="the run in the runs list")
        logged_in.save_screenshot(str(ARTIFACTS / "airflow-runs.png"))
    finally:  # the form's other defaults train on Fashion-MNIST: do not let it hold the machine
        rid = urllib.parse.quote(run["dag_run_id"], safe="")
        live_stack.api("PATCH", f"/dags/{EXPERIMENT_DAG}/dagRuns/{rid}", {"state": "failed"})
