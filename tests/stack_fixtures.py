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

import pytest

from bnpipe.operations.stack import EXPERIMENT_DAG, Stack

CONF = {"dataset": "breast_cancer", "grid": "smoke", "epochs": 2, "batch_size": 16}
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
            "BNPIPE_INPUT_DIRS": str(home / "inbox"),
            "BNPIPE_INBOX": str(home / "inbox"),
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
    run_id = live_stack.trigger(EXPERIMENT_DAG, CONF)
    state = live_stack.wait_for_run(EXPERIMENT_DAG, run_id, timeout=600)
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
