"""Faults under the real scheduler: a training task SIGKILLed mid-fit, then the DAG run cleared and re-run.

Uses the shared stack of test_stack_e2e.py (Airflow servers + MLflow server as real processes).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.parse

import pytest
from stack_fixtures import mlflow_rest, tags_of

from bnpipe.operations.stack import EXPERIMENT_DAG

pytestmark = pytest.mark.integration

CONF = {
    "dataset": "fashion_mnist",
    "max_rows": 6000,
    "grid": "custom",
    "axes": {"preprocessing": ["standard", "bn_first"]},
    "hidden": [16],
    "epochs": 40,
    "batch_size": 32,
}
MODEL = "bnpipe-fashion_mnist"


def _q(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def _experiment_id(stack) -> str:
    return mlflow_rest(stack, "GET", "experiments/get-by-name", experiment_name="bnpipe")["experiment"]["experiment_id"]


def _runs(stack, flt: str, view: str = "ACTIVE_ONLY") -> list[dict]:
    try:
        experiment_id = _experiment_id(stack)
    except urllib.error.HTTPError:  # not created yet: no runs
        return []
    body = {"experiment_ids": [experiment_id], "filter": flt, "run_view_type": view, "max_results": 1000}
    return mlflow_rest(stack, "POST", "runs/search", body).get("runs", [])


def _variant_runs(stack, dag_run_id: str, view: str = "ACTIVE_ONLY") -> list[dict]:
    parents = _runs(stack, f"tags.`bnpipe.dag_run_id` = '{dag_run_id}' and tags.`bnpipe.role` = 'parent'")
    if not parents:
        return []
    return _runs(stack, f"tags.`bnpipe.parent_run_id` = '{parents[0]['info']['run_id']}'", view)


def _train_tis(stack, run_id: str) -> list[dict]:
    return stack.client.task_instances(EXPERIMENT_DAG, run_id, "train")


def _kill_one_mid_fit(stack, run_id: str, deadline: float) -> dict:
    """SIGKILL a running training task once its variant run has logged an epoch; returns the TI."""
    while time.monotonic() < deadline:
        for ti in _train_tis(stack, run_id):
            if ti["state"] != "running" or not ti.get("pid"):
                continue
            runs = _variant_runs(stack, run_id)
            index = str(ti["map_index"])  # the rendered label only appears once the task has finished
            live = [r for r in runs if tags_of(r).get("bnpipe.map_index") == index and r["info"]["status"] == "RUNNING"]
            if live and any(m["key"] == "val_accuracy" for m in live[0]["data"].get("metrics", [])):
                os.kill(ti["pid"], signal.SIGKILL)
                return {**ti, "mlflow_run_id": live[0]["info"]["run_id"], "variant": live[0]["info"]["run_name"]}
        time.sleep(0.3)
    raise AssertionError("no training task was caught mid-fit")


def _counts(stack, run_id: str) -> dict:
    runs = _variant_runs(stack, run_id)
    per_variant: dict[str, int] = {}
    for r in runs:
        name = tags_of(r).get("bnpipe.variant")
        if name:
            per_variant[name] = per_variant.get(name, 0) + 1
    versions = mlflow_rest(stack, "GET", "model-versions/search", filter=f"name='{MODEL}'").get("model_versions", [])
    alias = mlflow_rest(stack, "GET", "registered-models/alias", name=MODEL, alias="champion")["model_version"]
    return {"per_variant": per_variant, "versions": len(versions), "alias": alias["version"]}


@pytest.fixture(scope="module")
def killed_run(live_stack):
    run_id = live_stack.client.trigger(EXPERIMENT_DAG, CONF)
    killed = _kill_one_mid_fit(live_stack, run_id, time.monotonic() + 300)
    state = live_stack.client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=600)
    return run_id, killed, state


def test_sigkilled_training_task_is_retried_and_its_orphan_run_killed(live_stack, killed_run):
    run_id, killed, state = killed_run
    assert state == "success"
    ti = next(t for t in _train_tis(live_stack, run_id) if t["map_index"] == killed["map_index"])
    assert ti["state"] == "success" and ti["try_number"] == killed["try_number"] + 1
    name = killed["variant"]
    orphan = mlflow_rest(live_stack, "GET", "runs/get", run_id=killed["mlflow_run_id"])["run"]
    assert orphan["info"]["status"] == "KILLED"
    assert orphan["info"]["lifecycle_stage"] == "deleted"
    active = [r for r in _variant_runs(live_stack, run_id) if r["info"]["run_name"] == name]
    assert len(active) == 1 and active[0]["info"]["status"] == "FINISHED"
    assert tags_of(active[0])["bnpipe.try_number"] == str(killed["try_number"] + 1)


def test_clearing_and_rerunning_leaves_counts_unchanged(live_stack, killed_run):
    run_id, _, state = killed_run
    assert state == "success"
    before = _counts(live_stack, run_id)
    assert before["per_variant"] and set(before["per_variant"].values()) == {1}
    live_stack.client.api("POST", f"/dags/{EXPERIMENT_DAG}/dagRuns/{_q(run_id)}/clear", {"dry_run": False})
    deadline = time.monotonic() + 60
    while live_stack.client.dag_run(EXPERIMENT_DAG, run_id)["state"] == "success":
        assert time.monotonic() < deadline, "the cleared run never restarted"
        time.sleep(0.5)
    assert live_stack.client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=600) == "success"
    after = _counts(live_stack, run_id)
    assert after == before
    assert all(t["try_number"] >= 2 for t in _train_tis(live_stack, run_id))


def test_two_runs_triggered_at_once_leave_the_alias_on_the_better_model(live_stack):
    """Two experiment runs on the same data, started together: the alias ends on the best version."""
    base = {"dataset": "wine", "grid": "smoke", "batch_size": 16}  # its own model: other tests' champion untouched
    runs = [live_stack.client.trigger(EXPERIMENT_DAG, {**base, "epochs": e}) for e in (1, 4)]
    assert [live_stack.client.wait_for_run(EXPERIMENT_DAG, r, timeout=600) for r in runs] == ["success", "success"]
    name = "bnpipe-wine"
    versions = mlflow_rest(live_stack, "GET", "model-versions/search", filter=f"name='{name}'")["model_versions"]
    assert all(v["status"] == "READY" for v in versions)
    champion = mlflow_rest(live_stack, "GET", "registered-models/alias", name=name, alias="champion")["model_version"]
    tags = {t["key"]: t["value"] for t in champion.get("tags", [])}
    same_data = [v for v in versions if {t["key"]: t["value"] for t in v.get("tags", [])}.get("bnpipe.data_digest")
                 == tags["bnpipe.data_digest"]]  # fmt: skip
    best = max(float({t["key"]: t["value"] for t in v["tags"]}["bnpipe.metric_value"]) for v in same_data)
    assert float(tags["bnpipe.metric_value"]) == best
    assert len(same_data) >= 2, "both runs must have registered their (different) winners"
