"""One real stack per test session, shared by the end-to-end and browser tests.

``live_stack`` starts Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
SQLite) and an MLflow server on free 127.0.0.1 ports under a temp dir, and stops exactly those
processes at the end. ``stack_run`` is one experiment run triggered through the REST API.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bnpipe.operations.stack import EXPERIMENT_DAG, Stack

CONF = {"dataset": "breast_cancer", "grid": "smoke", "epochs": 2, "batch_size": 16}
TRAIN_CONCURRENCY = 2  # training tasks at once per DAG run, whatever the machine's cores
MODEL = "bnpipe-breast_cancer"


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    home = base / "home"
    (home / "inbox").mkdir(parents=True)
    stack = Stack(
        base / "stack",
        extra_env={
            "BNPIPE_HOME": str(home),
            "BNPIPE_SCHEDULE": "",  # no scheduled run competing with the test's runs
            "BNPIPE_TRAIN_CONCURRENCY": str(TRAIN_CONCURRENCY),  # default: one per core; 1 on a 1-core runner
            "BNPIPE_INPUT_DIRS": str(home / "inbox"),
            "BNPIPE_INBOX": str(home / "inbox"),
            "BNPIPE_SCORE_ON_CHAMPION": "1",  # the scoring DAG runs on a new champion (test_assets.py; it stays paused)
        },
    )
    t0 = time.monotonic()
    try:
        stack.start(timeout=300, unpause=(EXPERIMENT_DAG,))
        stack.startup_seconds = time.monotonic() - t0
        print(f"\nstack up in {stack.startup_seconds:.1f} s: {stack.airflow_url} {stack.mlflow_url}")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack_run(live_stack):
    """The experiment, triggered by REST with a conf; its run id, final state and duration."""
    t0 = time.monotonic()
    run_id = live_stack.client.trigger(EXPERIMENT_DAG, CONF)
    state = live_stack.client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=600)
    seconds = time.monotonic() - t0
    print(f"\nexperiment run {run_id}: {state} in {seconds:.1f} s")
    return {"run_id": run_id, "state": state, "seconds": seconds}


def mlflow_rest(stack: Stack, method: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """MLflow's REST API (``/api/2.0/mlflow/...``) on the stack's tracking server."""
    url = f"{stack.mlflow_url}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def parent_and_children(stack: Stack, dag_run_id: str) -> tuple[dict, list[dict]]:
    """The DAG run's MLflow parent run and its nested runs, found through MLflow's REST API."""
    exp = mlflow_rest(stack, "GET", "experiments/get-by-name", experiment_name="bnpipe")["experiment"]
    flt = f"tags.`bnpipe.dag_run_id` = '{dag_run_id}' and tags.`bnpipe.role` = 'parent'"
    parents = mlflow_rest(stack, "POST", "runs/search", {"experiment_ids": [exp["experiment_id"]], "filter": flt})
    assert len(parents.get("runs", [])) == 1, parents
    parent = parents["runs"][0]
    flt = f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'"
    children = mlflow_rest(stack, "POST", "runs/search", {"experiment_ids": [exp["experiment_id"]], "filter": flt})
    return parent, children.get("runs", [])


def tags_of(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


# --- approval=required runs (tests/test_approval.py, tests/test_browser.py) ------------------------------
APPROVE_TASK = "approve"


def approval_conf(stack: Stack, name: str) -> dict:
    """A short approval=required run on a model of its own, ``bnpipe-<name>``: iris as a csv file in the
    input directory's ``approval/`` folder (the inbox DAG watches only the top folder), 4 variants, 1 epoch.

    The rows are shuffled by ``name``: a snapshot is stored by its content's digest and keeps the name of
    the file first ingested with that content, so equal files would share one model."""
    import zlib

    from sklearn.datasets import load_iris

    folder = Path(stack.env["BNPIPE_INPUT_DIRS"]) / "approval"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.csv"
    frame = load_iris(as_frame=True).frame.rename(columns={"target": "species"})
    frame.sample(frac=1.0, random_state=zlib.crc32(name.encode())).to_csv(path, index=False)
    return {"dataset": "csv", "data_path": str(path), "label": "species", "grid": "smoke", "epochs": 1,
            "batch_size": 16, "approval": "required"}  # fmt: skip


def _hitl_path(run_id: str) -> str:
    rid = urllib.parse.quote(run_id, safe="")
    return f"/dags/{EXPERIMENT_DAG}/dagRuns/{rid}/taskInstances/{APPROVE_TASK}/-1/hitlDetails"


def wait_for_approval(stack: Stack, run_id: str, timeout: float = 600) -> dict:
    """The run's approval request (Airflow's HITL detail) once its ``approve`` task waits for an answer."""
    from bnpipe.operations.airflow_api import FINAL_STATES, ApiError

    deadline = time.monotonic() + timeout
    while True:
        try:
            detail = stack.client.api("GET", _hitl_path(run_id))
        except ApiError as exc:
            if exc.status != 404:  # 404: no request yet
                raise
            detail = None
        if detail and detail["task_instance"]["state"] == "awaiting_input" and _paused(stack, detail):
            return detail
        state = stack.client.dag_run(EXPERIMENT_DAG, run_id)["state"]
        if state in FINAL_STATES or time.monotonic() > deadline:
            tis = {t["task_id"]: t["state"] for t in stack.client.task_instances(EXPERIMENT_DAG, run_id)}
            raise AssertionError(f"run {run_id} is {state} and asks for no approval: {tis}")
        time.sleep(2)


def _paused(stack: Stack, detail: dict) -> bool:
    """Whether the process that paused the task for input has exited (the scheduler's log says so).

    An answer given before that is a race in Airflow 3.3.2's LocalExecutor: the resumed task already
    runs when the pausing process's exit is reported, and the scheduler then marks the running task
    FAILED ("state changed externally"). A person answers minutes later; a test must wait for it.
    """
    ti_id = detail["task_instance"]["id"]
    log = stack.log_dir / "scheduler.log"
    return log.exists() and any(
        "final_state=awaiting_input" in line and ti_id in line for line in log.read_text(errors="replace").splitlines()
    )


def respond(stack: Stack, run_id: str, option: str, missing_ok: bool = False) -> dict | None:
    """Answer the run's approval request through the REST API (``PATCH .../hitlDetails``) as the stack's user.

    ``missing_ok``: no request (yet), or answered already, is no error; returns None then."""
    from bnpipe.operations.airflow_api import ApiError

    try:
        return stack.client.api("PATCH", _hitl_path(run_id), {"chosen_options": [option]})
    except ApiError as exc:
        if missing_ok and exc.status in (404, 409):
            return None
        raise
