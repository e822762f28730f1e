"""The two UIs in headless Debian Chromium (Selenium, /usr/bin/chromedriver; no browser download).

Uses the session's real stack (``live_stack``) and its finished run (``stack_run``), and runs one
approval=required run of its own, approved in the Airflow UI. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
import time
import urllib.parse
from pathlib import Path

import pytest
from stack_fixtures import (
    APPROVE_TASK,
    CONF,
    approval_conf,
    mlflow_rest,
    parent_and_children,
    respond,
    tags_of,
    wait_for_approval,
)

from bnpipe.mlflow_edge import tracking
from bnpipe.operations.stack import EXPERIMENT_DAG

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


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


def _close_mlflow_assistant(driver) -> None:
    """Close MLflow's assistant panel, which opens by itself on a first visit and covers the page's right third."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


# An input's value set through the DOM's own setter plus an input event, which React's onChange sees
SET_VALUE = """const [el, text] = arguments;
Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(el, text);
el.dispatchEvent(new Event("input", {bubbles: true}));"""


def _fill_trigger_form(driver, conf: dict) -> None:
    """Type ``conf``'s Params into the open trigger form. The form groups them in sections (params.SECTIONS),
    collapsed, one open at a time: each field's section is opened first. Enums are comboboxes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from bnpipe.operations.params import SPEC

    for name, value in conf.items():
        combo, named = f"//*[@id='element_{name}']//input[@role='combobox']", f"//input[@name='element_{name}']"
        field = _wait(driver, lambda d, c=combo, n=named: d.find_elements(By.XPATH, c) or d.find_elements(By.XPATH, n),
                      what=f"the field {name}")[0]  # fmt: skip
        if not field.is_displayed():
            section = SPEC[name]["section"]
            _click(driver, f"//*[@role='dialog']//button[normalize-space(.)='{section}']", what=f"section {section}")
            _wait(driver, lambda d, field=field: field.is_displayed(), what=f"the field {name} in section {section}")
        said = SPEC[name]["description"][:40]  # the form renders the descriptions after the fields: poll
        _wait(driver, lambda d, said=said: said in _text(d), what=f"the description of {name}: {said}...")
        if field.get_attribute("role") == "combobox":  # typing filters the options; Enter takes the one left
            field.click()
            field.send_keys(str(value), Keys.ENTER)
            continue

        def typed(d, field=field, text=str(value)):
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(text)
            if field.get_attribute("value") != text:  # a key lost while the form re-rendered: set it as React would
                d.execute_script(SET_VALUE, field, text)
            return field.get_attribute("value") == text

        _wait(driver, typed, what=f"{value!r} typed into {name}")


def _runs(live_stack) -> list[dict]:
    return live_stack.client.api("GET", f"/dags/{EXPERIMENT_DAG}/dagRuns?limit=100")["dag_runs"]


def _trigger_from_the_form(driver, live_stack, conf: dict, screenshot: str | None = None) -> dict:
    """Open the DAG's trigger form, type ``conf`` and trigger; the new run as the REST API lists it."""
    before = {r["dag_run_id"] for r in _runs(live_stack)}
    driver.get(f"{live_stack.airflow_url}/dags/{EXPERIMENT_DAG}")
    _click(driver, "//*[@data-testid='trigger-dag-button']", what="the Trigger button")
    _fill_trigger_form(driver, conf)
    if screenshot:
        driver.save_screenshot(str(ARTIFACTS / screenshot))
    _click(driver, "//*[@role='dialog']//button[normalize-space(.)='Trigger']", what="the dialog's Trigger button")

    def new_run():
        return next((r for r in _runs(live_stack) if r["dag_run_id"] not in before), None)

    return _wait(driver, lambda d: new_run(), what="the triggered run in the REST API")


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
    """bnpipe's link to the experiment (``tracking.ui_page``, not ``.../runs``) opens on the training runs.

    MLflow 3.17's UI shows an experiment as GenAI (overview of traces, "Detect issues") unless the browser
    was switched to Model training or the page asks for it (``?workflowType=machine_learning``)."""
    parent, children = parent_and_children(live_stack, stack_run["run_id"])
    browser.get(f"{live_stack.mlflow_url}/{tracking.ui_page(parent['info']['experiment_id'])}")
    dag_run_id = stack_run["run_id"]
    _wait(browser, lambda d: "/runs" in d.current_url and dag_run_id in _text(d), what="the training runs table")
    assert "/overview" not in browser.current_url and "Detect Issues" not in _text(browser)
    # the expand button sits in the parent run's grid cell; clicking it shows the nested runs
    _click(
        browser,
        f"//a[normalize-space(.)='{dag_run_id}']/ancestor::*[@role='gridcell'][1]//button",
        what="the parent run (named after the DAG run)",
    )
    names = [c["info"]["run_name"] for c in children]
    _wait(browser, lambda d: all(n in _text(d) for n in names), what=f"variant runs {names}")
    _close_mlflow_assistant(browser)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-experiment.png"))


def test_mlflow_models_view_lists_the_variants_logged_models(browser, live_stack, stack_run):
    """The experiment's Models tab lists a LoggedModel per variant, the registered winner among them."""
    parent, children = parent_and_children(live_stack, stack_run["run_id"])
    exp = parent["info"]["experiment_id"]
    models = mlflow_rest(live_stack, "POST", "logged-models/search", {"experiment_ids": [exp], "max_results": 100})
    mine = [m["info"] for m in models.get("models", []) if m["info"].get("source_run_id") in
            {c["info"]["run_id"] for c in children}]  # fmt: skip
    assert len(mine) == len(children), f"{len(mine)} LoggedModels for {len(children)} variant runs"
    browser.get(f"{live_stack.mlflow_url}/{tracking.ui_page(exp).replace('?', '/models?')}")
    names = sorted({m["name"] for m in mine})
    _wait(browser, lambda d: all(n in _text(d) for n in names), what=f"the LoggedModels {names}")
    _close_mlflow_assistant(browser)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-models.png"))


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
    """Runs after the shared run has finished: change one Param in the form and trigger.

    The form shows the Params in their sections (params.SPEC's `section`), each with its description."""
    conf = {"dataset": "fashion_mnist", "epochs": CONF["epochs"] + 1}
    run = _trigger_from_the_form(logged_in, live_stack, conf, screenshot="airflow-trigger-form.png")
    try:
        assert run["conf"]["epochs"] == CONF["epochs"] + 1
        logged_in.get(f"{live_stack.airflow_url}/dags/{EXPERIMENT_DAG}/runs")
        _wait(logged_in, lambda d: run["dag_run_id"] in _text(d), what="the run in the runs list")
        logged_in.save_screenshot(str(ARTIFACTS / "airflow-runs.png"))
    finally:  # the form's other defaults train on Fashion-MNIST: do not let it hold the machine
        rid = urllib.parse.quote(run["dag_run_id"], safe="")
        live_stack.client.api("PATCH", f"/dags/{EXPERIMENT_DAG}/dagRuns/{rid}", {"state": "failed"})


def test_a_champion_approved_in_the_airflow_ui_moves_the_alias(logged_in, live_stack, stack_run):
    """approval=required from the trigger form; the task `approve` waits; Approve on its Required Action tab moves
    `champion` to the run's version (task `promote`). After the shared run, which would otherwise queue it."""
    conf = approval_conf(live_stack, "approved_in_browser")
    run = _trigger_from_the_form(logged_in, live_stack, conf, screenshot="airflow-trigger-approval.png")
    rid, answered = run["dag_run_id"], False
    try:
        assert {k: run["conf"][k] for k in conf} == conf
        version = wait_for_approval(live_stack, rid)["subject"].split(" v")[1].split()[0]
        logged_in.get(f"{live_stack.airflow_url}/dags/{EXPERIMENT_DAG}/runs/{urllib.parse.quote(rid, safe='')}"
                      f"/tasks/{APPROVE_TASK}/required_actions")  # fmt: skip
        _wait(logged_in, lambda d: "Comparison" in _text(d) and "Claims" in _text(d), what="the approval request")
        assert f"Make bnpipe-approved_in_browser v{version} the champion?" in _text(logged_in)
        logged_in.save_screenshot(str(ARTIFACTS / "airflow-approval.png"))
        _click(logged_in, "//*[@data-testid='hitl-option-Approve']", what="the Approve button")
        _wait(logged_in, lambda d: "Response received" in _text(d), what="the response to be recorded")
        answered = True
    finally:
        if not answered:  # a run left waiting would hold the DAG (one run at a time) until its timeout
            respond(live_stack, rid, "Reject", missing_ok=True)
    assert live_stack.client.wait_for_run(EXPERIMENT_DAG, rid, timeout=300) == "success"
    states = {t["task_id"]: t["state"] for t in live_stack.client.task_instances(EXPERIMENT_DAG, rid)}
    assert (states["approve"], states["promote"]) == ("success", "success")
    model = "bnpipe-approved_in_browser"
    held = mlflow_rest(live_stack, "GET", "registered-models/alias", name=model, alias="champion")
    assert held["model_version"]["version"] == version
    tags = tags_of(parent_and_children(live_stack, rid)[0])
    assert tags["bnpipe.approval"] == f"approved by {live_stack.username}" and tags["bnpipe.alias_moved"] == "true"
    events = live_stack.client.api("GET", f"/assets/events?source_run_id={urllib.parse.quote(rid)}&limit=100")
    moved = [e for e in events["asset_events"] if e["uri"] == "bnpipe://models/bnpipe-approved_in_browser/champion"]
    assert [(e["source_task_id"], e["extra"]["version"]) for e in moved] == [("promote", int(version))]
